"""The report when the float reference is not worth comparing against: its warning above
the verdict, and no verdict at chance (train.json's `check`, quantflow.models.health)."""

from conftest import REPO
from quantflow.report import render
from quantflow.report.verdict import fidelity_cell, paired_cell, runs_on


def comparison(check):
    group = {
        "dataset": "d",
        "model": "m",
        "num_samples": 1000,
        "verdict": [{"sentence": "**Smallest within 0.5 pp**: `tflite-int8`"}],
        "training": {"check": check},
    }
    return render.render(
        REPO / "reports/comparison.md.j2",
        groups=[group],
        compact_table=False,
        cross_model=[],
        tolerance_pp=0.5,
        reference="tflite-fp32",
        runs_on=runs_on,
        paired=paired_cell,
        fidelity=fidelity_cell,
        size_plot="size.png",
        pareto_plot="score.png",
    )


def test_at_chance_the_verdict_is_withheld_with_the_reason():
    from quantflow.models.health import float_model_check

    check = float_model_check({"accuracy": 0.86, "val_accuracy": 0.1}, 10, [0.999], 2)
    md = comparison(check)
    assert "> **Warning: the float model is at chance" in md
    assert "train.batchnorm_momentum" in md
    assert "No verdict: the float reference is at chance" in md
    assert "Smallest within" not in md


def test_a_sound_model_gets_its_verdict_and_an_overfit_one_a_warning():
    from quantflow.models.health import float_model_check

    ok = comparison(float_model_check({"accuracy": 0.9, "val_accuracy": 0.89}, 10, [], 3))
    assert "Smallest within" in ok and "Warning" not in ok
    gap = comparison(float_model_check({"accuracy": 0.99, "val_accuracy": 0.6}, 10, [], 3))
    assert "Smallest within" in gap and "far below its training top-1" in gap
