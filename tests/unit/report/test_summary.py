"""quantflow.report.summary: the summary job as a library function, on a subset of a real
default run's files (tests/data/summary_run: 14 variants of every method family, copied
from the default pipeline's results; refreshed when a record gains a field). Every record it writes must equal that run's record
of the same variant (they depend only on the variant's own files and the fp32 reference),
and the rendered report must carry each of them."""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO
from quantflow.evaluate.paired import load_predictions, paired_test, save_predictions
from quantflow.report.records import PAIRED_FIELDS
from quantflow.report.summary import SummaryInputs, SummaryOutputs, summarise

RUN = REPO / "tests/data/summary_run"
MODEL = "results/fashion_mnist/tiny_mobilenet"


def inputs(root: Path) -> SummaryInputs:
    def rel(pattern):
        return sorted(str(p.relative_to(root)) for p in root.glob(pattern))

    return SummaryInputs(
        metrics=rel(f"{MODEL}/eval/*/metrics.json"),
        latencies=rel(f"{MODEL}/eval/*/latency.json"),
        training=rel(f"{MODEL}/float/train.json"),
        errors=rel(f"{MODEL}/weightquant/*/errors.json"),
        fat=rel(f"{MODEL}/fat/*/fat.json"),
        fat_history=rel(f"{MODEL}/fat/*/history.csv"),
        fat_thresholds=rel(f"{MODEL}/fat/*/thresholds.pickle"),
        fat_checks=rel(f"{MODEL}/fat/*/tflite.json"),
        diagnoses=rel(f"{MODEL}/eval/*/diagnosis.json"),
        counts=rel(f"{MODEL}/micronet.json"),
        adjustable=rel(f"{MODEL}/adjustable/*/adjustable.json"),
        adjustable_bits=rel(f"{MODEL}/adjustable/*/quant_info.json"),
        adjustable_checks=rel(f"{MODEL}/adjustable/*/tflite.json"),
        info=rel("data/*/splits/info.json"),
        predictions=rel(f"{MODEL}/eval/*/predictions.npz"),
        template=str(REPO / "reports/summary.md.j2"),
        comparison_template=str(REPO / "reports/comparison.md.j2"),
    )


def outputs() -> SummaryOutputs:
    names = {
        "json": "summary.json",
        "md": "summary.md",
        "html": "summary.html",
        "front": "report_front.html",
    }
    return SummaryOutputs(
        **{f: "results/" + names.get(f, f"{f}.png") for f in SummaryOutputs.__dataclass_fields__}
    )


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    root = tmp_path_factory.mktemp("summary") / "run"
    shutil.copytree(RUN, root)
    # per-image results of two variants (the run predates them): made up here, so that
    # the paired test's fields of the int8 record are checked against the function
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 300)
    for variant, noise in (("tflite-fp32", 1.5), ("tflite-int8", 2.0)):
        scores = np.eye(10)[labels] + noise * rng.random((300, 10))
        save_predictions(root / MODEL / "eval" / variant / "predictions.npz", labels, scores)
    # the confusion matrices the page shows (PNGs are not kept in the test data): drawn
    # from each metrics.json, as the evaluation draws them
    from quantflow.metrics import plot_confusion_matrix

    names = json.loads((root / "data/fashion_mnist/splits/info.json").read_text())["class_names"]
    for path in (root / MODEL / "eval").glob("*/metrics.json"):
        m = json.loads(path.read_text())
        plot_confusion_matrix(
            m["confusion_matrix"], names, root / "results" / m["confusion_png"], m["variant"]
        )
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    cwd = Path.cwd()
    try:
        os.chdir(root)  # the workflow's relative paths: results/<dataset>/<model>/...
        records = summarise(
            inputs(root),
            outputs(),
            config,
            versions={"numpy": "x"},
            machine={"cpu": "test", "logical_cpus": 2, "platform": "linux", "python": "3.11"},
        )
    finally:
        os.chdir(cwd)
    return root, records


def test_every_record_is_the_runs_record(summary):
    root, records = summary
    expected = json.loads((RUN / "expected_records.json").read_text())
    by = {r["variant"]: r for r in expected}
    assert {r["variant"] for r in records} == set(by)
    for record in records:
        # the run's record, and the paired test's fields added since
        mine = {k: v for k, v in record.items() if k not in PAIRED_FIELDS}
        assert mine == by[record["variant"]], record["variant"]
    by = {r["variant"]: r for r in records}
    credit = {
        v: load_predictions(root / MODEL / "eval" / v / "predictions.npz")["credit"]
        for v in ("tflite-fp32", "tflite-int8")
    }
    want = paired_test(credit["tflite-int8"], credit["tflite-fp32"])
    assert by["tflite-int8"]["p_value"] == want["p"] and want["differ"] > 0
    assert by["tflite-int8"]["differ_images"] == want["differ"]
    assert by["tflite-fp32"]["differ_images"] == 0 and by["tflite-fp32"]["p_value"] == 1.0
    assert by["fat-w8a8-sym-pc"]["p_value"] is None  # no per-image results: not judged
    assert json.loads((root / "results/summary.json").read_text()) == records


def test_the_report_names_every_variant_and_embeds_every_figure(summary):
    root, records = summary
    md = (root / "results/summary.md").read_text()
    html = (root / "results/summary.html").read_text()
    for r in records:
        assert f"{r['variant']}" in md and r["variant"] in html
        # every confusion matrix shown in the page (embedded), linked from the markdown
        assert re.search(
            f'<img src="data:image/png;base64,[^"]+" alt="confusion: {r["variant"]}"', html
        )
        assert f"]({r['confusion_png']})" in md
    # the per-class recall: a table in the markdown, a plot of its change in the page
    assert "| class |" in md and "<th>class</th>" not in html
    assert 'alt="per-class recall change"' in html
    for field in SummaryOutputs.__dataclass_fields__:
        path = root / getattr(outputs(), field)
        assert path.exists() and path.stat().st_size > 0, field
        if path.suffix == ".png":
            assert path.read_bytes()[:4] == b"\x89PNG"
            assert "data:image/png;base64" in html
    # the table groups the variants by method family, every family of the run present
    for family in ("float", "post-training quantization", "weight-only", "FAT", "adjustable"):
        assert family in md, family


def test_timing_notes_other_work_and_separate_runs():
    """The report's timing note: a timing job that saw other processes use CPU is named,
    and timings taken hours apart are said to come from different runs."""
    from quantflow.report.summary import _timing_load

    def timed(variant, at, others=0.01, load=0.5):
        return {
            "variant": variant,
            "latency_variant": variant,
            "measured_at": at,
            "other_work_cores": others,
            "load_before": {"load_1min": load, "load_5min": load, "runnable": 1},
            "load_after": {"load_1min": load, "load_5min": load, "runnable": 2},
        }

    quiet = [timed("a", "2026-12-05T10:00:00+00:00"), timed("b", "2026-12-05T10:03:00+00:00")]
    note = _timing_load(quiet + [{"variant": "fixed-4", "latency_variant": "keras-float"}])
    assert note["busy"] == [] and not note["separate_runs"] and note["seen"]
    assert (note["first"], note["last"]) == ("2026-12-05 10:00 UTC", "2026-12-05 10:03 UTC")
    busy = quiet + [timed("c", "2026-12-05T13:00:00+00:00", others=0.9, load=2.5)]
    note = _timing_load(busy)
    assert note["busy"] == ["c"] and note["separate_runs"] and note["high"] == 2.5
