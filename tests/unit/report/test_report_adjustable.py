"""The report's adjustable-quantization parts: the targets table, the bit-width and Pareto
figures, and the summary template's section."""

import numpy as np
import pytest

from quantflow.report.records import REFERENCE_VARIANT
from quantflow.report.methods import adjustable_rows, pareto_front, plot_bits_per_layer
from quantflow.report.render import render
from conftest import REPO

TEMPLATE = REPO / "reports" / "summary.md.j2"


def test_pareto_front_hand_example():
    points = [
        (2.0, 92.0),  # 0: fp32, best accuracy: front
        (0.5, 91.0),  # 1: front
        (0.6, 90.0),  # 2: dominated by 1 (higher score, lower accuracy)
        (0.5, 91.0),  # 3: identical to 1: both on the front
        (0.2, 85.0),  # 4: lowest score: front
        (1.0, 91.0),  # 5: dominated by 1 (same accuracy, higher score)
        (0.2, 84.0),  # 6: dominated by 4 (same score, lower accuracy)
    ]
    assert pareto_front(points) == [0, 1, 3, 4]
    assert pareto_front([]) == []
    assert pareto_front([(1, 1)]) == [0]


def _record(model, variant, accuracy, size_bytes, **extra):
    return {
        "dataset": "ds",
        "model": model,
        "variant": variant,
        "accuracy": accuracy,
        "size_bytes": size_bytes,
        "ms_per_image_b1": 1.0,
        "num_samples": 10000,
        **extra,
    }


def _inputs():
    score = {
        "score": 0.5,
        "parameter_score": 0.2,
        "operation_score": 0.3,
        "mean_weight_bits": 4.5,
        "mean_activation_bits": 6.25,
    }
    records = [
        _record("m", "tflite-fp32", 0.9000, 40960),
        _record("m", "adjq-small", 0.8975, 50000, **score),
        _record("m", "adjq-small-int8", 0.9012, 12288, **score),
        _record("m", "adjq-big", 0.9100, 50000, score=1.0),  # no int8 record, no check
        _record("other", "adjq-small", 0.5, 1000, score=0.4),  # no reference record
    ]
    summaries = [
        {
            "dataset": "ds",
            "model": "m",
            "target": "small",
            "settings": {
                "metric_weight": 0.1,
                "target_score": None,
                "min_bits": 2,
                "max_bits": 8,
                "epochs": 1,
                "images": 64,
            },
            "float_val_accuracy": 0.91,
            "val_accuracy": 0.9,
            "best": {"mini_epoch": 3, "score": 0.5, "val_accuracy": 0.9, "within_tolerance": True},
            "swa": {"used": True, "before": 0.89, "after": 0.9},
            "score": score,
            "packed": {"payload_bits": 80000, "file_bytes": 10240},
            "seconds": 12.5,
            "steps": 40,
        },
        {"dataset": "ds", "model": "m", "target": "big", "settings": {"metric_weight": 0.01}},
        {"dataset": "ds", "model": "other", "target": "small"},
    ]
    checks = [
        {
            "dataset": "ds",
            "model": "m",
            "target": "small",
            "top1_agreement": 0.995,
            "mean_abs_logit_difference_steps": 0.1,
            "max_abs_logit_difference_steps": 2,
            "size_bytes": 12000,
        }
    ]
    return records, summaries, checks


def test_adjustable_rows():
    records, summaries, checks = _inputs()
    small, big, other = adjustable_rows(records, summaries, checks)
    assert (small["dataset"], small["model"], small["target"]) == ("ds", "m", "small")
    assert small["metric_weight"] == 0.1 and small["target_score"] is None
    assert small["bounds"] == "2..8"
    assert small["sim_accuracy"] == 0.8975
    assert small["sim_delta_pp"] == pytest.approx(-0.25)  # 89.75 % - 90.00 %
    assert small["int8_accuracy"] == 0.9012
    assert small["int8_delta_pp"] == pytest.approx(0.12)  # 90.12 % - 90.00 %
    assert small["score"] == 0.5
    assert (small["parameter_score"], small["operation_score"]) == (0.2, 0.3)
    assert (small["mean_weight_bits"], small["mean_activation_bits"]) == (4.5, 6.25)
    assert small["packed_kib"] == 10.0  # 10240 / 1024
    assert small["int8_kib"] == 12.0  # the int8 record's 12288 bytes
    assert small["int8_agreement"] == 0.995
    assert small["swa_used"] is True and small["seconds"] == 12.5
    assert small["num_samples"] == 10000

    # no int8 record, no check, no score or packed summary: None, the sim delta still there
    assert big["sim_delta_pp"] == pytest.approx(1.0)
    assert big["score"] == 1.0  # from the simulation record
    for key in (
        "int8_accuracy",
        "int8_delta_pp",
        "int8_kib",
        "int8_agreement",
        "packed_kib",
        "bounds",
        "target_score",
        "swa_used",
        "seconds",
        "mean_weight_bits",
    ):
        assert big[key] is None, key
    # no reference
    assert other["sim_accuracy"] == 0.5 and other["sim_delta_pp"] is None

    # the delta add_comparisons adds is the one used
    compared = [dict(r, delta_accuracy_pp=r["accuracy"] - 0.9) for r in records]
    assert adjustable_rows(compared, summaries[:1], [])[0]["sim_delta_pp"] == (
        pytest.approx(0.8975 - 0.9)
    )
    assert adjustable_rows([], [], []) == []


def _assert_png(path):
    from matplotlib.image import imread

    assert path.stat().st_size > 0
    image = imread(path)
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 1


def _quant_info(weights, activations):
    return {
        "format": 1,
        "bias_bits": 32,
        "p_ref": 1.0,
        "f_ref": 1.0,
        "unmatched": [],
        "weights": {
            f"conv{i}/kernel": {"layer": f"conv{i}", "bits": b} for i, b in enumerate(weights)
        },
        "activations": {
            f"act{i}": {"quantizer": None, "bits": b} for i, b in enumerate(activations)
        },
    }


@pytest.mark.parametrize("kind", ["weights", "activations"])
def test_plot_bits_per_layer(tmp_path, kind):
    one = _quant_info([[2, 2, 4, 8], [16, 1]], [[8], [3, 5, 5]])
    two = _quant_info([[4] * 6], [])
    for name, infos in [
        ("one", {"m small": one}),
        ("two", {"m small": one, "m big": two}),
        ("none", {}),
    ]:
        path = tmp_path / f"{kind}-{name}.png"
        plot_bits_per_layer(infos, kind, path)
        _assert_png(path)
    with pytest.raises(ValueError):
        plot_bits_per_layer({}, "biases", tmp_path / "x.png")


def _render(**adjustable_context):
    """The whole summary template with no variant groups and no weight-only or FAT rows."""
    from quantflow.report.verdict import fidelity_cell, paired_cell, runs_on

    context = {"size_plot": "size.png", "pareto_plot": "score.png", **adjustable_context}
    return render(
        TEMPLATE,
        groups=[],
        cross_model=[],
        tolerance_pp=0.5,
        runs_on=runs_on,
        paired=paired_cell,
        fidelity=fidelity_cell,
        alpha=0.05,
        compact_table=False,
        reference=REFERENCE_VARIANT,
        weightquant=[],
        weightquant_plot="wq.png",
        fat=[],
        fat_rmse_plot="rmse.png",
        fat_alphas_plot="alphas.png",
        threads=1,
        latency_images=10,
        latency_batches=1,
        cores_held=1,
        config_yaml="a: 1\n",
        versions={"numpy": "2"},
        machine={"cpu": "cpu", "logical_cpus": 1, "platform": "linux", "python": "3"},
        **context,
    )


def test_summary_template_adjustable_section():
    heading = "## Adjustable mixed-precision quantization"
    figures = {
        "adjustable_weight_bits_plot": "adjustable_weight_bits.png",
        "adjustable_activation_bits_plot": "adjustable_activation_bits.png",
        "pareto_plot": "pareto.png",
    }
    assert heading not in _render()  # a summary script that does not pass it yet
    assert heading not in _render(adjustable=[], **figures)

    records, summaries, checks = _inputs()
    rows = adjustable_rows(records, summaries, checks)
    text = _render(adjustable=rows, **figures)
    assert heading in text
    assert "`adjq-small` and `adjq-small-int8`" in text
    assert (
        "| ds / m | small | 0.100 | n/a | 2..8 | 89.75 | -0.25 | 90.12 | +0.12 | 0.5000 |" in text
    )
    assert "| 10.0 | 12.0 | 99.50 | yes | 12 |" in text  # packed, int8 KiB, agreement, SWA, s
    assert "| ds / m | big | 0.010 | n/a | n/a | 91.00 | +1.00 | n/a | n/a | 1.0000 |" in text
    assert "0.010 pp of top-1 on a 10000-image test set" in text
    for name in figures.values():
        assert f"]({name})" in text
    assert "README" in text

    for r in rows:
        r["num_samples"] = None
    assert "0.01 pp of top-1 on a 10,000-image test set" in _render(adjustable=rows, **figures)
