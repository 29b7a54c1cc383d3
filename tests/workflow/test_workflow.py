"""The real `snakemake` command on a tiny config, in a temporary directory."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, run_snakemake
from quantflow.evaluate.paired import load_predictions, paired_test
from quantflow.report.verdict import fidelity_cell, paired_cell

pytestmark = pytest.mark.workflow

TINY = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
FAT_VARIANTS = ["fat-w8a8-sym-pc", "fat-w8a8-sym-pc-sim", "fat-w4a4-asym-pt-sim"]
ADJUSTABLE_VARIANTS = ["adjq-t1", "adjq-t1-int8"]
FIELDS = [
    "dataset",
    "model",
    "variant",
    "accuracy",
    "top5",
    "precision",
    "sensitivity",
    "g_mean",
    "size_bytes",
    "ms_per_image_b1",
    "ms_per_image_batched",
]


def write_config(path, config):
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, fashion_mnist_dir):
    work = tmp_path_factory.mktemp("tiny")
    config = json.loads(json.dumps(TINY))
    config["dataset"]["mirrors"] = [f"file://{fashion_mnist_dir}"]
    cfg = write_config(work / "tiny.yaml", config)
    run_snakemake(work, cfg, "--cores", "2")
    return work, cfg


def test_summary_json_has_one_meaningful_record_per_variant(tiny_run):
    work, _ = tiny_run
    records = json.loads((work / "results/summary.json").read_text())
    assert [r["variant"] for r in records] == [
        "keras-float",
        "tflite-fp32",
        "tflite-fp16",
        "tflite-dynamic",
        "tflite-int8",
        "tflite-int16x8",
        "tflite-int4-weights",
        "tflite-dynamic-int4",
        "tflite-static-int4",
        "tflite-int8-cal10",
        "tflite-int8-cal100",
        "tflite-int8-class3",
        "tflite-int8-float1",
        "bin-2",
        "bin-8",
        "fixed-2",
        "fixed-2-tflite",
        "fixed-8",
        "fixed-8-tflite",
        *FAT_VARIANTS,
        *ADJUSTABLE_VARIANTS,
    ]
    by = {r["variant"]: r for r in records}
    for r in records:
        assert all(k in r for k in FIELDS), r.keys()
        assert (r["dataset"], r["model"]) == ("fashion_mnist", "tiny")
        for k in ("accuracy", "top5", "precision", "sensitivity", "g_mean"):
            assert 0.0 <= r[k] <= 1.0
        assert r["num_samples"] == 500
        assert r["top5"] >= r["accuracy"]
        if r["variant"].endswith("-sim") or r["variant"] == "adjq-t1":  # simulations
            assert r["ms_per_image_b1"] is None and r["latency_variant"] is None
        else:  # timed: their own timing, the weight-only ones keras-float's
            assert r["ms_per_image_b1"] > 0 and r["ms_per_image_batched"] > 0
            simulated = r["variant"].startswith(("bin-", "fixed-"))
            simulated = simulated and not r["variant"].endswith("-tflite")
            assert r["latency_variant"] == ("keras-float" if simulated else r["variant"])
        assert sum(map(sum, r["confusion_matrix"])) == pytest.approx(500)
        assert 0.0 <= r["tie_rate"] <= 1.0 and 0.0 <= r["top5_tie_rate"] <= 1.0
        assert (work / "results" / r["confusion_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # 2 epochs on 2,000 images: far above chance (10%), not yet a good model.
    assert by["keras-float"]["accuracy"] > 0.5
    # The same network in TensorFlow and in LiteRT float32 gives the same predictions.
    assert abs(by["keras-float"]["accuracy"] - by["tflite-fp32"]["accuracy"]) <= 0.004
    assert abs(by["tflite-int8"]["accuracy"] - by["tflite-fp32"]["accuracy"]) <= 0.05
    assert by["tflite-int8"]["size_bytes"] < 0.6 * by["tflite-fp32"]["size_bytes"]
    assert by["tflite-int8"]["input_dtype"] == "int8"
    assert by["tflite-fp32"]["delta_accuracy_pp"] == 0.0
    assert by["tflite-int8"]["delta_accuracy_pp"] == pytest.approx(
        100 * (by["tflite-int8"]["accuracy"] - by["tflite-fp32"]["accuracy"])
    )


def test_weight_only_quantization_variants(tiny_run):
    work, _ = tiny_run
    by = {r["variant"]: r for r in json.loads((work / "results/summary.json").read_text())}
    base = work / "results/fashion_mnist/tiny/weightquant"
    for algorithm in ("bin", "fixed"):
        low, high = by[f"{algorithm}-2"], by[f"{algorithm}-8"]
        # 8 bits per weight: the float model's predictions, nearly; 2 bits: far from them.
        assert abs(high["accuracy"] - by["keras-float"]["accuracy"]) <= 0.02
        assert low["size_kind"] == "packed" and low["size_bytes"] < high["size_bytes"]
        # packed 8-bit weights: about a quarter of the fp32 TFLite model
        assert 0.2 < high["size_ratio"] < 0.35
        errors = {
            b: json.loads((base / f"{algorithm}_{b}bits/errors.json").read_text()) for b in (2, 8)
        }
        mean = {b: e["relative_error_pct_mean"] for b, e in errors.items()}
        assert mean[8] < mean[2] / 10  # 6 more bits: ~64x smaller steps
        # quantized checkpoints are temporary once evaluated (keep_checkpoints: false)
        assert not (base / f"{algorithm}_8bits/weights.pickle").exists()
        for e in errors.values():
            pct = [e[f"relative_error_pct_{s}"] for s in ("min", "mean", "max")]
            assert pct[0] <= pct[1] <= pct[2]
            assert e["relative_error_pct"]  # one relative error (%) per quantized variable
    md = (work / "results/summary.md").read_text()
    assert "## Weight-only quantization" in md and "](weightquant_accuracy.png)" in md
    assert (work / "results/weightquant_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert re.search(r"\| tiny \| fixed \| 8 \| " + f"{100 * by['fixed-8']['accuracy']:.2f}", md)
    # the deployable fixed-point files: the checkpoint's predictions from int8 / INT4 codes
    for b, storage in ((8, "int8"), (2, "int4")):
        deployed, sim = by[f"fixed-{b}-tflite"], by[f"fixed-{b}"]
        assert deployed["format"] == "tflite" and deployed["ms_per_image_b1"] > 0
        assert abs(deployed["accuracy"] - sim["accuracy"]) <= 0.004  # float rounding: ties
        check = json.loads((base / f"fixed_{b}bits/tflite.json").read_text())
        assert check["weight_storage"][storage] > 0 and "DEQUANTIZE" in check["ops"]
        assert check["max_abs_difference"] <= 1e-4 * check["max_abs_output"]
    assert by["fixed-8-tflite"]["size_bytes"] < 0.35 * by["tflite-fp32"]["size_bytes"]
    # bin has no exact integer form: said in the report, no file made
    assert not (base / "bin_8bits/model.tflite").exists()
    assert "`bin` has no exact deployable form here" in md


def test_fat_outputs_and_variants(tiny_run):
    from quantflow.quant.fat.thresholds import load_thresholds

    work, _ = tiny_run
    by = {r["variant"]: r for r in json.loads((work / "results/summary.json").read_text())}
    base = work / "results/fashion_mnist/tiny/fat"
    fp32, deployed, sim = by["tflite-fp32"], by["fat-w8a8-sym-pc"], by["fat-w8a8-sym-pc-sim"]
    # the int8 TFLite model of the trained fake-quant model, run by LiteRT
    assert deployed["format"] == "tflite" and deployed["input_dtype"] == "int8"
    assert deployed["model_path"].endswith("fat/w8a8-sym-pc/model.tflite")
    assert deployed["size_bytes"] < 0.6 * fp32["size_bytes"]
    assert abs(deployed["accuracy"] - fp32["accuracy"]) <= 0.03
    assert abs(deployed["accuracy"] - sim["accuracy"]) <= 0.01
    assert sim["format"] == "keras" and sim["size_kind"] == "packed"
    check = json.loads((base / "w8a8-sym-pc/tflite.json").read_text())
    assert check["check_images"] == 200 and check["top1_agreement"] >= 0.995
    assert check["top1_agreement_clear_margin"] in (None, 1.0)
    assert check["mean_abs_logit_difference_steps"] <= 0.5
    assert check["activation_grid_mismatches"] == []
    assert check["input"] == check["output"] == "int8" and check["weight_storage"]["int4"] == 0
    # 4-bit activations: no TFLite model, simulation only
    assert not (base / "w4a4-asym-pt/model.tflite").exists()
    assert by["fat-w4a4-asym-pt-sim"]["size_bytes"] < sim["size_bytes"]
    for scheme, epochs in (("w8a8-sym-pc", 2), ("w4a4-asym-pt", 2)):
        summary = json.loads((base / scheme / "fat.json").read_text())
        assert summary["final_val_rmse"] <= summary["initial_val_rmse"]
        assert summary["steps"] == epochs * 10 and summary["seconds"] > 0
        history = (base / scheme / "history.csv").read_text().splitlines()
        assert history[0] == "epoch,train_rmse,val_rmse,learning_rate"
        assert len(history) == 1 + 1 + epochs  # header, calibrated (epoch 0), epochs
        assert json.loads((base / scheme / "ckpt/state.json").read_text())["epoch"] == epochs
        assert (base / scheme / "ckpt/model.weights.h5").stat().st_size > 0
        best = json.loads((base / scheme / "best_ckpt/state.json").read_text())
        assert best["epoch"] == summary["best_epoch"]
        thresholds = load_thresholds(base / scheme / "thresholds.pickle")
        assert (
            thresholds["scheme"] == scheme
            and thresholds["trained"].keys() == thresholds["initial"].keys()
        )
        for row in thresholds["trained"].values():
            for key in ("alpha", "alpha_r"):
                if key in row:
                    assert 0.5 <= min(np_ravel(row[key])) and max(np_ravel(row[key])) <= 1.0
        assert summary["alphas"]["weight"]["count"] > 0
    md = (work / "results/summary.md").read_text()
    assert "## FAT: trained quantization thresholds" in md
    assert re.search(
        r"\| tiny \| w8a8-sym-pc \| LiteRT int8 \| " + f"{100 * deployed['accuracy']:.2f}", md
    )
    assert re.search(r"\| tiny \| w4a4-asym-pt \| simulation", md)
    for png in ("fat_rmse.png", "fat_alphas.png"):
        assert f"]({png})" in md
        assert (work / "results" / png).read_bytes()[:4] == b"\x89PNG"


def np_ravel(value):
    return [value] if isinstance(value, float) else list(value)


def test_summary_markdown_shows_the_numbers(tiny_run):
    work, _ = tiny_run
    records = json.loads((work / "results/summary.json").read_text())
    md = (work / "results/summary.md").read_text()
    table = md[md.index("every variant") :]  # the grouped table: method, variant, top-1, ...
    for r in records:
        row = next(line for line in table.splitlines() if f" | {r['variant']} | " in line)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == r["variant"]
        assert cells[2] == f"{100 * r['accuracy']:.2f}"
        assert cells[3] == f"{r['delta_accuracy_pp']:+.2f}"
        assert cells[4] == paired_cell(r)  # the paired test against tflite-fp32
        assert cells[5] == fidelity_cell(r)  # agreement / output SNR against it
        assert cells[6] == f"{r['size_bytes'] / 1024:.1f}"
        assert cells[15] == f"{r['size_ratio']:.3f}"
        assert f"]({r['confusion_png']})" in md
        # every variant judged from its per-image results: the summary's p is the test's
        eval_dir = work / "results/fashion_mnist/tiny/eval"
        mine = load_predictions(eval_dir / r["variant"] / "predictions.npz")
        ref = load_predictions(eval_dir / "tflite-fp32" / "predictions.npz")
        assert mine["credit"].mean() == pytest.approx(r["accuracy"], abs=1e-12)
        assert r["p_value"] == paired_test(mine["credit"], ref["credit"])["p"]
        # output SNR from the saved outputs, written out from its definition
        noise = np.sum((mine["scores"].astype(np.float64) - ref["scores"]) ** 2)
        if r["variant"] == "tflite-fp32" or noise == 0:
            assert r["output_snr_db"] is None
        else:
            signal = np.sum(ref["scores"].astype(np.float64) ** 2)
            assert r["output_snr_db"] == pytest.approx(10 * np.log10(signal / noise))
    assert "max_train: 2000" in md  # the config used
    assert re.search(r"- tensorflow(-cpu)? 2\.\d+", md)  # package versions
    history = (work / "results/fashion_mnist/tiny/float/history.csv").read_text().splitlines()
    assert history[0].startswith("stage,epoch,") and len(history) == 3


def test_rerun_has_nothing_to_do_and_report_regenerates_alone(tiny_run):
    work, cfg = tiny_run
    dry = run_snakemake(work, cfg, "-n", "--cores", "1")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    metrics = sorted((work / "results").glob("**/metrics.json"))
    before = {p: p.stat().st_mtime_ns for p in metrics}
    (work / "results/summary.md").unlink()
    run_snakemake(work, cfg, "--cores", "1", "--forcerun", "summary")
    assert (work / "results/summary.md").exists()
    assert {p: p.stat().st_mtime_ns for p in metrics} == before


def _make_report_args(work) -> list[str]:
    """The snakemake arguments `make report` uses in `work` (make -n prints its recipe)."""
    out = subprocess.run(
        ["make", "-n", "-s", "-f", str(REPO / "Makefile"), "-o", "install", "report", "BIN=bin"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in out.splitlines() if "snakemake" in line)
    return shlex.split(line)[1:]


def test_make_report_renders_the_last_runs_report_alone(tiny_run):
    """`make report` without CONFIG= after a --configfile run: the summary alone, with the
    configuration that run used (results/run_config.yaml); with no such file it refuses to
    plan any other rule rather than the default model's 90 jobs."""
    work, _ = tiny_run
    saved = yaml.safe_load((work / "results/run_config.yaml").read_text())
    assert saved["dataset"]["max_train"] == 2000 and list(saved["models"]) == ["tiny"]
    args = _make_report_args(work)
    assert args[args.index("--configfile") + 1] == "results/run_config.yaml"
    assert "--allowed-rules" in args and args[args.index("--allowed-rules") + 1] == "summary"
    exe = Path(sys.executable).with_name("snakemake")
    base = [str(exe), "--snakefile", str(REPO / "Snakefile"), "--directory", str(work)]
    metrics = sorted((work / "results").glob("**/metrics.json"))
    before = {p: p.stat().st_mtime_ns for p in metrics}
    summary = (work / "results/summary.md").stat().st_mtime_ns
    # run where `make report` runs: in the project directory (the config path is relative)
    proc = subprocess.run([*base, *args], cwd=work, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "results/summary.md").stat().st_mtime_ns > summary
    assert {p: p.stat().st_mtime_ns for p in metrics} == before
    # no record of the last run's config: the default model's jobs are refused, none runs
    (work / "results/run_config.yaml").rename(work / "run_config.keep")
    try:
        args = _make_report_args(work)
        assert "--configfile" not in args
        proc = subprocess.run([*base, *args], cwd=work, capture_output=True, text=True, timeout=600)
        assert proc.returncode != 0 and not (work / "results/fashion_mnist/tiny_mobilenet").exists()
    finally:
        (work / "run_config.keep").rename(work / "results/run_config.yaml")


def test_unknown_config_key_stops_before_any_job(tmp_path, fashion_mnist_dir):
    config = json.loads(json.dumps(TINY))
    config["dataset"]["mirrors"] = [f"file://{fashion_mnist_dir}"]
    config["train"]["epochz"] = 3
    proc = run_snakemake(
        tmp_path, write_config(tmp_path / "bad.yaml", config), "--cores", "1", check=False
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "quantflow: config: train.epochz: unknown key; allowed keys here: batch_size" in out
    assert len(out.splitlines()) < 10  # one line, not the whole schema
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


def test_wrong_type_names_the_key(tmp_path):
    config = json.loads(json.dumps(TINY))
    config["dataset"]["mirrors"] = ["file:///nowhere"]
    config["evaluate"]["batch_size"] = "large"
    proc = run_snakemake(
        tmp_path, write_config(tmp_path / "bad.yaml", config), "--cores", "1", check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "batch_size" in out and "large" in out
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "change, line",
    [
        (
            {"fat": {"schemes": ["w8a8-sym-pc", "w1a8-sym-pc"]}},
            "quantflow: config: fat.schemes[1]: 'w1a8-sym-pc' has weight bits 1; weight bits "
            "are 2..16",
        ),
        (
            {"adjustable": {"targets": {"t1": {"min_bits": 6, "max_bits": 4}}}},
            "quantflow: config: adjustable (target t1): min_bits 6 is above max_bits 4; need "
            "min_bits <= max_bits",
        ),
    ],
)
def test_keys_that_depend_on_each_other_are_checked_before_any_job(tmp_path, change, line):
    config = json.loads(json.dumps(TINY))
    config["dataset"]["mirrors"] = ["file:///nowhere"]
    for section, value in change.items():
        config[section].update(value)
    proc = run_snakemake(
        tmp_path, write_config(tmp_path / "bad.yaml", config), "--cores", "1", check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and line in out, out[-2000:]
    assert len(out.splitlines()) < 10 and not (tmp_path / "data").exists()


def test_no_working_mirror_lists_each_and_says_how_to_get_the_data(tmp_path):
    config = json.loads(json.dumps(TINY))
    config["dataset"]["mirrors"] = [f"file://{tmp_path}/empty", "http://127.0.0.1:9/fmnist"]
    config["dataset"]["retries"] = 1
    proc = run_snakemake(
        tmp_path, write_config(tmp_path / "nomirror.yaml", config), "--cores", "1", check=False
    )
    assert proc.returncode != 0
    log = (tmp_path / "logs/download/fashion_mnist.log").read_text()
    assert f"file://{tmp_path}/empty/train-images-idx3-ubyte.gz" in log
    assert "http://127.0.0.1:9/fmnist/train-images-idx3-ubyte.gz" in log
    assert "apt-get install dataset-fashion-mnist" in log
    assert not (tmp_path / "data/fashion_mnist/raw/manifest.json").exists()


def test_adjustable_target_files_score_and_report(tiny_run):
    from quantflow.quant.adjustable import score as adjustable
    from quantflow.formats import bitpack

    work, _ = tiny_run
    base = work / "results/fashion_mnist/tiny/adjustable/t1"
    for name in (
        "ckpt/model.weights.h5",
        "ckpt/state.json",
        "best_ckpt/model.weights.h5",
        "best_ckpt/state.json",
        "initial_thresholds.json",
        "model_info.json",
        "quant_info.json",
        "history.csv",
        "model.keras",
        "weights.packed",
        "adjustable.json",
        "model.tflite",
        "tflite.json",
    ):
        assert (base / name).stat().st_size > 0, name
    summary = json.loads((base / "adjustable.json").read_text())
    info = json.loads((base / "quant_info.json").read_text())
    counts = json.loads((base / "model_info.json").read_text())["layers"]
    # quant_info.json alone reproduces the score
    again = adjustable.score_from_quant_info(info, counts)
    assert again["score"] == pytest.approx(summary["score"]["score"], rel=1e-12)
    assert summary["init"]["from"] == "fat w8a8-sym-pc"
    # best_ckpt holds the chosen state with its score
    best = json.loads((base / "best_ckpt/state.json").read_text())
    assert best["score"] == pytest.approx(summary["best"]["score"])
    # bits moved below 8 (target 0.3 < uniform int8's 0.5) and stayed within bounds
    bits = [
        b for kind in ("weights", "activations") for row in info[kind].values() for b in row["bits"]
    ]
    assert min(bits) >= 2 and max(bits) <= 8 and summary["score"]["score"] < 0.5
    # the packed file: its payload is the kernels' storage the score counts
    packed = bitpack.load_packed(base / "weights.packed")
    assert packed.payload_bits == summary["packed"]["score_kernel_bits"]
    # the deployable int8 model agrees with its simulation
    check = json.loads((base / "tflite.json").read_text())
    assert check["top1_agreement"] >= 0.99 and check["activation_grid_mismatches"] == []
    assert check["weight_storage"]["max_levels"] <= 255
    by = {r["variant"]: r for r in json.loads((work / "results/summary.json").read_text())}
    sim, int8 = by["adjq-t1"], by["adjq-t1-int8"]
    assert sim["score"] == pytest.approx(summary["score"]["score"])
    assert int8["score"] >= sim["score"] - 1e-12  # 8-bit activations
    assert int8["input_dtype"] == "int8" and sim["size_kind"] == "packed file"
    # its size is the file on disk; the computed packed size is kept beside it
    assert sim["size_bytes"] == (base / "weights.packed").stat().st_size
    assert sim["packed_payload_bytes"] < sim["size_bytes"]
    # every variant has a score: fp32 2.0, uniform int8 about 0.5
    assert by["tflite-fp32"]["score"] == pytest.approx(2.0)
    assert 0.5 <= by["tflite-int8"]["score"] < 0.52
    md = (work / "results/summary.md").read_text()
    assert "## Adjustable mixed-precision quantization" in md
    for png in (
        "accuracy_vs_score.png",
        "adjustable_weight_bits.png",
        "adjustable_activation_bits.png",
    ):
        assert f"]({png})" in md and (work / "results" / png).read_bytes()[:4] == b"\x89PNG"


def test_post_training_quantization_variants(tiny_run):
    work, _ = tiny_run
    by = {r["variant"]: r for r in json.loads((work / "results/summary.json").read_text())}
    fp32 = by["tflite-fp32"]
    for variant in (
        "tflite-fp16",
        "tflite-dynamic",
        "tflite-int16x8",
        "tflite-int4-weights",
        "tflite-dynamic-int4",
        "tflite-static-int4",
        "tflite-int8-cal10",
        "tflite-int8-cal100",
        "tflite-int8-class3",
    ):
        r = by[variant]
        assert r["format"] == "tflite" and abs(r["delta_accuracy_pp"]) <= 5.0, variant
        assert r["size_bytes"] < fp32["size_bytes"], variant
    assert by["tflite-int4-weights"]["size_bytes"] < 0.7 * by["tflite-dynamic"]["size_bytes"]
    # ai-edge-quantizer's static int4: INT4 conv and dense kernels, int8 depthwise ones
    from quantflow.deploy.int4 import weight_storage

    storage = weight_storage(work / "results/fashion_mnist/tiny/tflite/static-int4.tflite")
    assert storage["int4"] >= 2 and storage["int8"] >= 1
    assert by["tflite-static-int4"]["size_bytes"] < 0.8 * by["tflite-int8"]["size_bytes"]
    for variant in ("tflite-int8", "tflite-int8-cal10", "tflite-int8-class3"):
        r = by[variant]
        assert (r["input_dtype"], r["output_dtype"]) == ("int8", "int8")
        assert r["input_scale"] > 0 and r["output_scale"] > 0
    assert (
        by["tflite-fp16"]["input_dtype"] == "float32" and by["tflite-fp16"]["input_scale"] is None
    )
    # the calibration logs: how many images, of which classes
    logs = work / "logs/tflite/fashion_mnist/tiny"
    assert "calibrating activation ranges on 10 of" in (logs / "int8-cal10.log").read_text()
    one_class = (logs / "int8-class3.log").read_text()
    assert re.search(r"images per class: \[0, 0, 0, 100(, 0)*\]", one_class), one_class
    md = (work / "results/summary.md").read_text()
    assert "| tflite-int8-class3 | int8 |" in md  # the I/O table


def test_per_layer_diagnosis_and_float_fallback(tiny_run):
    work, _ = tiny_run
    base = work / "results/fashion_mnist/tiny"
    diagnosed = sorted(p.parent.name for p in base.glob("eval/*/diagnosis.json"))
    assert diagnosed == sorted(
        [
            "tflite-int8",
            "tflite-int8-cal10",
            "tflite-int8-cal100",
            "tflite-int8-class3",
            "fat-w8a8-sym-pc",
            "adjq-t1-int8",
        ]
    )
    report = json.loads((base / "eval/tflite-int8/diagnosis.json").read_text())
    assert report["images"] == 50 and report["ops"] == len(report["layers"]) >= 10
    assert [row["op"] for row in report["layers"]][-1] == "FULLY_CONNECTED"
    assert all(row["cosine"] > 0.9 and row["scale"] > 0 for row in report["layers"])
    # the fallback model: the worst layer of that diagnosis runs in float
    from quantflow.deploy.convert import float_ops

    worst = report["layers"][report["worst"][0]]
    assert float_ops(str(base / "tflite/int8-float1.tflite")) == [worst["op"]]
    log = (work / "logs/tflite_float_fallback/fashion_mnist/tiny/1.log").read_text()
    assert worst["layer"] in log
    md = (work / "results/summary.md").read_text()
    assert "### Per-layer diagnosis of the int8 models" in md and "](int8_diagnosis.png)" in md
    assert "Leaving the layers the per-layer diagnosis of tflite-int8 finds worst" in md
    assert "### Post-training quantization: the TFLite lab's questions" in md
    assert (work / "results/int8_calibration.png").read_bytes()[:4] == b"\x89PNG"


def test_html_report_shows_the_rendered_summary_in_a_browser(tiny_run, tmp_path):
    """`snakemake --report report.html`: its landing page shows the verdict, the
    comparison table and both plots (headless Chromium's DOM and screenshot); the summary
    page is rendered HTML with every figure embedded; report.zip holds the same."""
    import zipfile

    import browser

    work, cfg = tiny_run
    records = json.loads((work / "results/summary.json").read_text())
    summary = work / "results/summary.html"
    page = browser.dump_dom(summary)
    assert page.count("<table") >= 5 and "<h1>quantflow summary</h1>" in page
    assert page.count('src="data:image/png;base64,') >= 8  # every figure, embedded
    assert "](" not in page and "|---|" not in page  # no raw markdown left
    for r in records:
        assert f"<td>{r['variant']}</td>" in page
    smallest = next(line for line in page.splitlines() if "Smallest within 0.5 pp" in line)

    report = tmp_path / "report.html"
    run_snakemake(work, cfg, "--report", str(report))
    landing = browser.dump_dom(report)
    assert "Which method, at what cost" in landing
    assert smallest.split("</strong>")[1][:60] in landing  # the same verdict line
    assert landing.count('src="data:image/png;base64,') >= 2 and "<table" in landing
    pixels = browser.screenshot(report, tmp_path / "report.png", width=1600, height=2000)
    assert pixels.shape == (2000, 1600, 3)
    assert pixels.std() > 0.05  # not a blank page
    assert browser.coloured_share(pixels) > 0.002  # the plots' markers and lines drew

    archive = tmp_path / "report.zip"
    run_snakemake(work, cfg, "--report", str(archive))
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        z.extractall(tmp_path / "unzipped")
    assert any(n.endswith("/report.html") for n in names)
    assert any(n.endswith("/summary.html") for n in names)
    unzipped = next((tmp_path / "unzipped").glob("*/report.html"))
    assert "Which method, at what cost" in browser.dump_dom(unzipped)


def test_verdict_follows_the_configured_tolerance_and_only_the_summary_reruns(tiny_run):
    work, cfg = tiny_run
    md = (work / "results/summary.md").read_text()
    assert "**Smallest within 0.5 pp**" in md
    metrics = sorted((work / "results").glob("**/metrics.json"))
    before = {p: p.stat().st_mtime_ns for p in metrics}
    wide = yaml.safe_load(cfg.read_text())
    wide["verdict"] = {"tolerance_pp": 100.0, "size_budget_kib": 1.0}
    wide_cfg = write_config(work / "wide.yaml", wide)
    try:
        run_snakemake(work, wide_cfg, "--cores", "1")
        md = (work / "results/summary.md").read_text()
        records = json.loads((work / "results/summary.json").read_text())
        shipped = [r for r in records if r["format"] == "tflite"]  # the picks: LiteRT files
        smallest = min(shipped, key=lambda r: (r["size_bytes"], -r["accuracy"]))
        assert "**Smallest within 100 pp** of `tflite-fp32`" in md
        assert f": `{smallest['variant']}`, {smallest['size_bytes'] / 1024:.1f} KiB" in md
        assert f"ship `{smallest['model_path']}`" in md
        assert "No deployable variant fits the size budget of 1.0 KiB." in md
        assert {p: p.stat().st_mtime_ns for p in metrics} == before
    finally:
        run_snakemake(work, cfg, "--cores", "1")


def test_two_models_get_a_panel_each_and_one_cross_model_table(tmp_path, fashion_mnist_dir):
    """A run with two models: each has its verdict and grouped table, the comparison plots
    a panel each, and one table compares the models."""
    micro = {"arch": "tiny_mobilenet", "width": 0.25, "head": 32}
    config = {
        "seed": 3,
        "dataset": {
            "name": "fashion_mnist",
            "mirrors": [f"file://{fashion_mnist_dir}"],
            "validation_size": 100,
            "max_train": 600,
            "max_test": 200,
        },
        "models": {"narrow": micro, "wide": {**micro, "width": 0.5}},
        "train": {
            "batch_size": 100,
            "stages": [{"epochs": 1, "learning_rate": 0.004, "warmup_steps": 2}],
        },
        "tflite": {"calibration_images": 20},
        "diagnosis": {"images": 0},
        "evaluate": {"batch_size": 50, "latency_images": 5, "latency_batches": 1},
        "weightquant": {"algorithms": ["bin"], "bits": [8], "keep_checkpoints": False},
        "fat": {"schemes": []},
        "adjustable": {"targets": None},
        "variants": ["tflite-fp32", "tflite-int8"],
    }
    cfg = write_config(tmp_path / "two.yaml", config)
    run_snakemake(tmp_path, cfg, "--cores", "2")
    md = (tmp_path / "results/summary.md").read_text()
    for model in ("narrow", "wide"):
        assert f"### fashion_mnist / {model}\n" in md
        assert f"## fashion_mnist / {model}: every variant" in md
    across = md[md.index("### Across models") :]
    rows = [line for line in across.splitlines() if line.startswith("| fashion_mnist / ")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| fashion_mnist / narrow",
        "| fashion_mnist / wide",
    ]
    records = json.loads((tmp_path / "results/summary.json").read_text())
    for row, model in zip(rows, ("narrow", "wide")):
        int8 = next(r for r in records if (r["model"], r["variant"]) == (model, "tflite-int8"))
        assert f" | {int8['delta_accuracy_pp']:+.2f} | " in row
    from matplotlib.image import imread

    for name in ("accuracy_vs_size.png", "accuracy_vs_score.png"):
        height, width = imread(tmp_path / "results" / name).shape[:2]
        assert width > 1.8 * height  # two panels side by side
