"""The comparison at the top of the summary: verdict lines generated from the numbers, the
grouped table, the cross-model rows and the two plots."""

import json

import numpy as np
import pytest
from matplotlib.image import imread

from quantflow.report.verdict import (
    cross_model_rows,
    family,
    grouped_rows,
    plot_accuracy_vs,
    verdict,
)
from conftest import REPO

N = 10000  # test images: one image is 0.01 pp
FP32_BYTES = 1_000_000


def rec(variant, accuracy, size, ms=0.05, fmt="tflite", batched=None, model="m", score=None):
    return {
        "dataset": "d",
        "model": model,
        "variant": variant,
        "accuracy": accuracy,
        "num_samples": N,
        "size_bytes": size,
        "format": fmt,
        "ms_per_image_b1": ms,
        "ms_per_image_batched": ms / 2 if batched is None else batched,
        "score": score,
    }


def with_deltas(records):
    ref = next(r for r in records if r["variant"] == "tflite-fp32")
    for r in records:
        r["delta_accuracy_pp"] = 100 * (r["accuracy"] - ref["accuracy"])
        r["size_ratio"] = r["size_bytes"] / ref["size_bytes"]
    return records


def run():
    return with_deltas(
        [
            rec("keras-float", 0.9000, 1_100_000, ms=1.0, fmt="keras"),
            rec("tflite-fp32", 0.9000, FP32_BYTES, ms=0.06),
            rec("tflite-int8", 0.8990, 300_000, ms=0.02),
            rec("tflite-int4-weights", 0.8940, 160_000, ms=0.30),
            rec("bin-4", 0.8960, 120_000, ms=1.0, fmt="keras"),
            rec("fat-w8a8-sym-pc", 0.8997, 300_000, ms=0.021),
            rec("adjq-s24", 0.8000, 90_000, ms=1.2, fmt="keras"),
        ]
    )


def pick(lines, kind):
    return next(line for line in lines if line["kind"] == kind)


def test_smallest_within_tolerance_is_a_deployable_file():
    records = run()
    next(r for r in records if r["variant"] == "fat-w8a8-sym-pc")["model_path"] = "f.tflite"
    smallest = pick(verdict(records), "smallest")
    # the smallest deployable within 0.5 pp: FAT and int8 at 293.0 KiB, FAT more accurate;
    # int4 weights are smaller but -0.60 pp
    assert smallest["variant"] == "fat-w8a8-sym-pc" and smallest["deployable"]
    assert smallest["path"] == "f.tflite" and "ship `f.tflite`" in smallest["sentence"]
    assert (
        smallest["ties"] == ["tflite-int8"]
        and "The same size: `tflite-int8`" in smallest["sentence"]
    )
    # bin-4 (-0.40 pp) is smaller, but a simulation: a what-if, never the pick
    assert "What-if: `bin-4`, 117.2 KiB (0.120x)" in smallest["sentence"]
    assert "-0.40 pp, 40 test images" in smallest["sentence"]
    # change the numbers: bin-4 falls out of tolerance like int4 weights (-0.60)
    for r in records:
        if r["variant"] == "bin-4":
            r["accuracy"], r["delta_accuracy_pp"] = 0.8940, -0.60
    changed = pick(verdict(records), "smallest")
    assert changed["variant"] == "fat-w8a8-sym-pc" and "What-if" not in changed["sentence"]
    # a wider tolerance admits int4 weights, and then adjq-s24's what-if at 10 pp
    wider = pick(verdict(records, tolerance_pp=0.6), "smallest")
    assert wider["variant"] == "tflite-int4-weights" and "What-if: `bin-4`" in wider["sentence"]
    widest = pick(verdict(records, tolerance_pp=10.0), "smallest")
    assert widest["variant"] == "tflite-int4-weights"
    assert "What-if: `adjq-s24`" in widest["sentence"]


def test_tolerance_boundary_is_included():
    records = run()
    int4 = next(r for r in records if r["variant"] == "tflite-int4-weights")
    assert int4["delta_accuracy_pp"] == pytest.approx(-0.60)
    assert pick(verdict(records, tolerance_pp=0.6), "smallest")["variant"] == "tflite-int4-weights"
    assert pick(verdict(records, tolerance_pp=0.59), "smallest")["variant"] == "fat-w8a8-sym-pc"


def test_exactly_half_a_point_down_is_within_the_default_tolerance():
    records = run()
    for r in records:
        if r["variant"] == "tflite-int4-weights":
            r["accuracy"] = 0.8950  # 50 images: -0.50 pp (-0.5000000000000004 in floats)
    smallest = pick(verdict(with_deltas(records)), "smallest")
    assert smallest["variant"] == "tflite-int4-weights"
    assert "top-1 89.50% (-0.50 pp, 50 test images)" in smallest["sentence"]
    for r in records:
        if r["variant"] == "tflite-int4-weights":
            r["accuracy"] = 0.8949  # one image more: out
    assert pick(verdict(with_deltas(records)), "smallest")["variant"] == "fat-w8a8-sym-pc"


def credits_for(**only):
    """Per-image credit on N images: every variant right on the first 8,900 images, and
    variant v also on the images of only[v] (index ranges past 8,900)."""
    out = {}
    for variant, extra in only.items():
        c = np.zeros(N)
        c[:8900] = 1.0
        c[list(extra)] = 1.0
        out[variant] = c
    return out


def test_ties_under_the_budget_are_decided_by_the_paired_test():
    records = run()  # under 300,000 bytes: fat-w8a8-sym-pc leads int8 by 7 images
    by = {r["variant"]: r for r in records}
    by["fat-w8a8-sym-pc"]["agreement"], by["tflite-int8"]["agreement"] = 0.990, 0.995
    # FAT right on 7 images int8 gets wrong, never the reverse: p = 2/128, a win
    credits = credits_for(
        **{"fat-w8a8-sym-pc": range(8900, 8997), "tflite-int8": range(8900, 8990)}
    )
    line = pick(verdict(records, credits=credits), "most_accurate_under_budget")
    assert line["variant"] == "fat-w8a8-sym-pc" and line["ties"] == []
    # the same 7-image lead with 50 images each way besides: p ~ 0.56, a tie, and the
    # tie goes to the more faithful model (top-1 agreement with tflite-fp32)
    credits["tflite-int8"][range(8997, 9047)] = 1.0
    credits["tflite-int8"][range(8940, 8990)] = 0.0
    credits["tflite-int8"][range(8990, 8997)] = 0.0
    assert credits["tflite-int8"].sum() == 8990
    line = pick(verdict(records, credits=credits), "most_accurate_under_budget")
    assert line["variant"] == "tflite-int8" and line["ties"] == ["fat-w8a8-sym-pc"]
    assert "Tied with it by the paired test (p >= 0.05): `fat-w8a8-sym-pc`" in line["sentence"]
    # without per-image results only the same top-1 ties
    line = pick(verdict(records), "most_accurate_under_budget")
    assert line["variant"] == "fat-w8a8-sym-pc" and line["ties"] == []


def test_most_accurate_under_the_budget_is_a_deployable_file():
    records = run()
    # 0.3 x 1,000,000 bytes: int8 (89.90%), FAT (89.97%), int4 fit; bin-4, adjq as what-ifs
    line = pick(verdict(records), "most_accurate_under_budget")
    assert line["variant"] == "fat-w8a8-sym-pc" and line["deployable"]
    assert "292.97 KiB" not in line["sentence"]
    assert "293.0 KiB, 0.3x `tflite-fp32`" in line["sentence"]
    assert "What-if" not in line["sentence"]  # no simulation under it is more accurate
    by = {r["variant"]: r for r in records}
    by["bin-4"].update(accuracy=0.9000, delta_accuracy_pp=0.0)
    line = pick(verdict(records), "most_accurate_under_budget")
    assert line["variant"] == "fat-w8a8-sym-pc" and "What-if: `bin-4`" in line["sentence"]
    # a budget in bytes that no deployable file fits: none picked, the what-if named
    small = pick(verdict(records, size_budget_bytes=125_000), "most_accurate_under_budget")
    assert small["variant"] is None
    assert "No deployable variant fits the size budget of 122.1 KiB" in small["sentence"]
    assert "What-if: `bin-4`" in small["sentence"]
    nothing = pick(verdict(records, size_budget_bytes=1_000), "most_accurate_under_budget")
    assert nothing["variant"] is None and "What-if" not in nothing["sentence"]


def test_fastest_deployable_ignores_simulations_and_variants_outside_tolerance():
    records = run()
    records.append(with_deltas([records[1], rec("tflite-bad", 0.80, 200_000, ms=0.001)])[1])
    records.append(rec("fixed-8", 0.9, 250_000, ms=0.0001, fmt="keras"))
    records[-1].update(delta_accuracy_pp=0.0, size_ratio=0.25)
    line = pick(verdict(records), "fastest_deployable")
    assert line["variant"] == "tflite-int8"
    # FAT's 0.021 ms is within 10% of 0.020: a tie on a shared machine
    assert line["ties"] == ["fat-w8a8-sym-pc"] and "0.020 ms per image" in line["sentence"]
    for r in records:
        if r["variant"] == "fat-w8a8-sym-pc":
            r["ms_per_image_b1"] = 0.03
    assert pick(verdict(records), "fastest_deployable")["ties"] == []


def test_missing_reference_and_missing_numbers():
    records = [r for r in run() if r["variant"] != "tflite-fp32"]
    lines = verdict(records)
    assert [line["variant"] for line in lines] == [None, None, None]
    assert all("No `tflite-fp32`" in line["sentence"] for line in lines)
    records = run()
    records[2]["ms_per_image_b1"] = None  # tflite-int8 without a timing
    records[4]["size_bytes"] = None  # bin-4 without a size
    lines = verdict(records)
    assert pick(lines, "smallest")["variant"] == "fat-w8a8-sym-pc"
    assert pick(lines, "fastest_deployable")["variant"] == "fat-w8a8-sym-pc"


def test_none_fields_are_skipped():
    records = run()
    by_name = {r["variant"]: r for r in records}
    by_name["bin-4"].update(accuracy=None, delta_accuracy_pp=None)  # no top-1: skipped
    by_name["tflite-int8"]["ms_per_image_batched"] = None
    by_name["fat-w8a8-sym-pc"]["num_samples"] = None  # no test-set size: no image count
    by_name["tflite-int4-weights"]["size_bytes"] = None
    lines = verdict(records)
    assert "bin-4" not in str(lines) and "tflite-int4-weights" not in str(lines)
    smallest = pick(lines, "smallest")
    assert smallest["variant"] == "fat-w8a8-sym-pc"
    assert "top-1 89.97% (-0.03 pp)" in smallest["sentence"]
    # the budget winner without a test-set size: ties only at the same top-1
    assert pick(lines, "most_accurate_under_budget")["ties"] == []
    fastest = pick(lines, "fastest_deployable")
    assert fastest["variant"] == "tflite-int8" and "ms batched" not in fastest["sentence"]
    assert "Batched, `fat-w8a8-sym-pc` is fastest: 0.0105 ms per image." in fastest["sentence"]
    records[1]["accuracy"] = None  # the reference without a top-1
    lines = verdict(records)
    assert [line["variant"] for line in lines] == [None, None, None]
    assert "`tflite-fp32` has no top-1 or size" in lines[0]["sentence"]


def test_another_reference_measures_against_it():
    records = run()
    # against keras-float (1,100,000 bytes, 90.00%) the deltas are the same, the ratio not
    line = pick(verdict(records, reference="keras-float"), "smallest")
    assert line["variant"] == "fat-w8a8-sym-pc"
    assert "`keras-float` (90.00%, 1074.2 KiB)" in line["sentence"]
    assert line["size_ratio"] == pytest.approx(300_000 / 1_100_000)
    # against int4 weights (89.40%) every variant but adjq-s24 is within 0.5 pp, and int4
    # weights is the smallest deployable one (bin-4 a what-if at +0.20 pp)
    line = pick(verdict(records, reference="tflite-int4-weights"), "smallest")
    assert line["variant"] == "tflite-int4-weights" and line["delta_accuracy_pp"] == 0.0
    assert "What-if: `bin-4`, 117.2 KiB (0.750x), top-1 89.60% (+0.20 pp" in line["sentence"]


def test_grouped_rows_follow_the_method_families():
    records = run()
    rows = grouped_rows(list(reversed(records)))
    assert [r["family"] for r in rows] == [
        "float",
        "float",
        "post-training quantization",
        "post-training quantization",
        "weight-only",
        "FAT",
        "adjustable",
    ]
    assert [r["variant"] for r in rows][:2] == ["tflite-fp32", "keras-float"]  # kept order
    assert [r["first_in_family"] for r in rows] == [True, False, True, False, True, True, True]
    assert family("tflite-int8-cal10") == "post-training quantization"
    assert family("adjq-s24-int8") == "adjustable" and family("fat-w4a8-sym-pc-sim") == "FAT"


def test_cross_model_rows():
    first = run()
    second = with_deltas(
        [
            rec("tflite-fp32", 0.85, 2_000_000, model="n"),
            rec("tflite-int8", 0.80, 500_000, model="n"),
        ]
    )
    rows = cross_model_rows({("d", "m"): first, ("d", "n"): second})
    assert [r["model"] for r in rows] == ["m", "n"]
    assert rows[0]["fat_variant"] == "fat-w8a8-sym-pc"
    assert rows[0]["fat_delta_pp"] == pytest.approx(-0.03)
    assert rows[0]["smallest"]["variant"] == "fat-w8a8-sym-pc"
    assert rows[1]["int8_delta_pp"] == pytest.approx(-5.0)
    assert rows[1]["fat_variant"] is None and rows[1]["smallest"]["variant"] == "tflite-fp32"
    assert rows[1]["most_accurate_under_budget"]["variant"] == "tflite-int8"
    assert rows[0]["reference_accuracy"] == 0.9 and rows[1]["reference_size_bytes"] == 2_000_000
    assert rows[0]["adjustable_variant"] == "adjq-s24" and rows[1]["adjustable_variant"] is None
    # the best FAT is the best deployable one, even when its simulation is more accurate
    first.append(
        with_deltas([first[1], rec("fat-w8a8-sym-pc-sim", 0.9010, 280_000, fmt="keras")])[1]
    )
    assert cross_model_rows({("d", "m"): first})[0]["fat_variant"] == "fat-w8a8-sym-pc"
    sims_only = [r for r in first if r["variant"] != "fat-w8a8-sym-pc"]
    assert cross_model_rows({("d", "m"): sims_only})[0]["fat_variant"] == "fat-w8a8-sym-pc-sim"


@pytest.mark.parametrize("x", ["size_bytes", "score"])
def test_plots_for_one_two_and_no_models(tmp_path, x):
    first = run()
    for i, r in enumerate(first):
        r["score"] = 2.0 / (i + 1)
    second = with_deltas(
        [
            rec("tflite-fp32", 0.85, 2_000_000, model="n", score=2.0),
            rec("tflite-int8", 0.80, 500_000, model="n", score=0.5),
        ]
    )
    for records, name in ((first, "one"), (first + second, "two"), ([], "none")):
        path = tmp_path / f"{name}.png"
        plot_accuracy_vs(records, path, x=x)
        pixels = imread(path)
        assert pixels.ndim == 3 and pixels.shape[0] > 100
    assert imread(tmp_path / "two.png").shape[1] > imread(tmp_path / "one.png").shape[1]
    with pytest.raises(ValueError):
        plot_accuracy_vs(first, tmp_path / "bad.png", x="accuracy")


def test_verdict_on_a_real_summary():
    path = REPO / "results/summary.json"
    if not path.exists():
        pytest.skip("no results/summary.json from a default run here")
    records = json.loads(path.read_text())
    names = {r["variant"] for r in records}
    for line in verdict([r for r in records if r["model"] == records[0]["model"]]):
        assert line["variant"] in names and f"`{line['variant']}`" in line["sentence"]


def test_comparison_section_for_two_models_renders_to_markdown_and_html(tmp_path):
    from quantflow.report import render as htmlreport
    from quantflow.report import render as report
    from quantflow.report.verdict import fidelity_cell, paired_cell, runs_on

    first = run()
    second = with_deltas(
        [
            rec("tflite-fp32", 0.85, 2_000_000, model="n"),
            rec("tflite-int8", 0.80, 500_000, model="n"),
        ]
    )
    groups = []
    for records in (first, second):
        for r in records:
            r["latency_variant"] = r["variant"]
        groups.append(
            {
                "dataset": "d",
                "model": records[0]["model"],
                "num_samples": N,
                "verdict": verdict(records),
                "grouped": grouped_rows(records),
                "shared_timing": False,
            }
        )
    for name in ("size.png", "score.png"):
        plot_accuracy_vs(
            first + second, tmp_path / name, x="size_bytes" if name == "size.png" else "score"
        )
    md = report.render(
        REPO / "reports/comparison.md.j2",
        groups=groups,
        compact_table=True,
        cross_model=cross_model_rows({("d", "m"): first, ("d", "n"): second}),
        tolerance_pp=0.5,
        reference="tflite-fp32",
        runs_on=runs_on,
        paired=paired_cell,
        fidelity=fidelity_cell,
        size_plot="size.png",
        pareto_plot="score.png",
    )
    assert md.count("**Smallest within 0.5 pp**") == 2
    assert "| d / m | 90.00 | 976.6 | -0.10 | `fat-w8a8-sym-pc`: -0.03 | `adjq-s24`: -10.00" in md
    assert "| `fat-w8a8-sym-pc`: -0.03, 293.0 KiB |" in md
    assert "| d / n | 85.00 | 1953.1 | -5.00 | n/a | n/a | `tflite-fp32`: +0.00, 1953.1 KiB |" in md
    assert "| weight-only | bin-4 | 89.60 | -0.40 | n/a | 117.2 |" in md
    html = htmlreport.html_fragment(md, tmp_path)
    assert html.count('src="data:image/png;base64,') == 2 and html.count("<table>") == 3
    assert "<strong>Smallest within 0.5 pp</strong>" in html
    with pytest.raises(FileNotFoundError):
        htmlreport.html_page("![missing](nothing.png)", tmp_path, "t")
    page = htmlreport.html_page(
        "[a file](x/confusion.png) and [a site](https://example.org)", tmp_path, "t"
    )
    assert '<span class="file-link" title="x/confusion.png">a file</span>' in page
    assert '<a href="https://example.org">a site</a>' in page


def test_speeds_tie_when_their_interquartile_ranges_overlap():
    """With ranges: 0.020 [0.019, 0.024] and 0.023 [0.022, 0.026] overlap (a tie, even at
    15% apart); 0.030 [0.029, 0.031] does not. Among tied ones the most faithful to the
    reference is named (agreement, then output SNR), then the smallest."""
    from quantflow.report.verdict import speed_tie

    records = run()
    by = {r["variant"]: r for r in records}
    by["tflite-int8"].update(ms_per_image_b1_iqr=[0.019, 0.024], agreement=0.990)
    by["fat-w8a8-sym-pc"].update(
        ms_per_image_b1=0.023, ms_per_image_b1_iqr=[0.022, 0.026], agreement=0.995
    )
    assert speed_tie(by["tflite-int8"], by["fat-w8a8-sym-pc"])
    line = pick(verdict(records), "fastest_deployable")
    assert line["variant"] == "fat-w8a8-sym-pc" and line["ties"] == ["tflite-int8"]
    assert "interquartile ranges" in line["sentence"] and "(`tflite-int8`)" in line["sentence"]
    # same agreement: output SNR decides
    by["tflite-int8"].update(agreement=0.995, output_snr_db=30.0)
    by["fat-w8a8-sym-pc"].update(output_snr_db=25.0)
    assert pick(verdict(records), "fastest_deployable")["variant"] == "tflite-int8"
    by["fat-w8a8-sym-pc"].update(ms_per_image_b1=0.030, ms_per_image_b1_iqr=[0.029, 0.031])
    assert not speed_tie(by["tflite-int8"], by["fat-w8a8-sym-pc"])
    assert pick(verdict(records), "fastest_deployable")["ties"] == []
