"""Which method, at what cost: the comparison at the top of the summary, generated from
one run's records (never fixed text).

    lines = verdict(records)              # one (dataset, model): three verdict lines
    rows = grouped_rows(records)          # the per-variant table, grouped by method
    cross = cross_model_rows({(dataset, model): records, ...})
    plot_accuracy_vs(all_records, "results/accuracy_vs_size.png", x="size_bytes")
    plot_accuracy_vs(all_records, "results/accuracy_vs_score.png", x="score")

A record is a variant's metrics as the summary has them (report.add_comparisons: top-1
"delta_accuracy_pp" against the fp32 TFLite model). "Deployable" means run by LiteRT (a
TFLite file: format "tflite"); the others run in TensorFlow (the float Keras model and the
simulations: weight-only checkpoints, fake-quant models), with the size of their packed
weights. Every pick is a deployable file, with its path; simulations appear as what-ifs.
Accuracy differences are wins only by the exact paired test on the same test images
(quantflow.evaluate.paired), otherwise ties; timings whose interquartile ranges overlap are
ties (`speed_tie`; without ranges, within LATENCY_TIE of each other).
"""

from __future__ import annotations

import math
from pathlib import Path

from quantflow.report.methods import _figure, pareto_front
from quantflow.report.ptq import image_count
from quantflow.report.records import REFERENCE_VARIANT
from quantflow.variants import FAMILIES, method

LATENCY_TIE = 0.10
FLOOR_PP = 3.0  # the plots show top-1 down to this far below the reference
STYLES = {  # method family: (marker, colour) in the plots
    "float": ("s", "tab:grey"),
    "post-training quantization": ("P", "tab:red"),
    "weight-only": ("^", "tab:blue"),
    "FAT": ("D", "tab:orange"),
    "adjustable": ("o", "tab:green"),
    "other": ("x", "tab:purple"),
}


def family(variant: str) -> str:
    """The method family of a variant name (quantflow.variants; "other" if it has none)."""
    return method(variant)


def families() -> list[str]:
    """The method families in the tables' order: quantflow.variants' order, then "other"."""
    return [*dict.fromkeys(f.method for f in FAMILIES), "other"]


def style(fam: str) -> tuple[str, str]:
    """(marker, colour) of a method family in the plots (a new family: "other"'s)."""
    return STYLES.get(fam, STYLES["other"])


def deployable(record: dict) -> bool:
    """Whether a record's variant is a file LiteRT runs (format "tflite")."""
    return record.get("format") == "tflite"


def runs_on(record: dict) -> str:
    """Where a record's variant runs: LiteRT, TensorFlow or TensorFlow (simulation)."""
    if deployable(record):
        return "LiteRT"
    return "TensorFlow" if record["variant"] == "keras-float" else "TensorFlow (simulation)"


def paired_cell(record: dict) -> str:
    """The table's verdict of the paired test against the reference: "win", "loss" or
    "tie", with p and how many test images the two classify differently."""
    if record.get("variant") == record.get("reference"):
        return "reference"
    p = record.get("p_value")
    if p is None:
        return "n/a"
    word = "tie"
    if record.get("significant"):
        word = "win" if record["delta_accuracy_pp"] > 0 else "loss"
    return f"{word} (p {p:.2g}, {record['differ_images']} differ)"


def fidelity_cell(record: dict) -> str:
    """The table's fidelity to the reference: top-1 agreement % / output SNR dB ("equal"
    where the outputs are the reference's own)."""
    agreement, snr = record.get("agreement"), record.get("output_snr_db")
    if agreement is None:
        return "n/a"
    snr_text = (
        "equal" if snr is None and agreement == 1.0 else "n/a" if snr is None else f"{snr:.1f}"
    )
    return f"{100 * agreement:.2f} / {snr_text}"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _has(record: dict, *keys: str) -> bool:
    return all(_number(record.get(k)) for k in keys)


def _kib(size_bytes: float) -> str:
    return f"{size_bytes / 1024:.1f} KiB"


def _top1(record: dict) -> str:
    """'top-1 90.51% (-0.34 pp, 34 test images)' ('(-0.34 pp)' without a test-set size)."""
    pp = record["delta_accuracy_pp"]
    n = image_count(pp, record.get("num_samples"))
    images = "" if n is None else f", {n} test image{'' if n == 1 else 's'}"
    return f"top-1 {100 * record['accuracy']:.2f}% ({pp:+.2f} pp{images})"


def _kind(record: dict) -> str:
    if deployable(record):
        return "deployable (LiteRT)"
    return (
        "the float Keras model"
        if record["variant"] == "keras-float"
        else "a simulation run in TensorFlow (packed weights)"
    )


def _names(records: list[dict]) -> str:
    return ", ".join(f"`{r['variant']}`" for r in records)


def _picked(kind: str, record: dict | None, ties: list[dict], sentence: str) -> dict:
    numbers = (
        "accuracy",
        "delta_accuracy_pp",
        "size_bytes",
        "size_ratio",
        "ms_per_image_b1",
        "ms_per_image_batched",
        "score",
        "agreement",
        "output_snr_db",
    )
    return {
        "kind": kind,
        "variant": record["variant"] if record else None,
        **{k: (record or {}).get(k) for k in numbers},
        "deployable": deployable(record) if record else None,
        "path": (record or {}).get("model_path"),
        "ties": [r["variant"] for r in ties],
        "sentence": sentence,
    }


def verdict(
    records: list[dict],
    tolerance_pp: float = 0.5,
    size_budget_bytes: float | None = None,
    size_budget_ratio: float = 0.3,
    reference: str = REFERENCE_VARIANT,
    credits: dict | None = None,
    alpha: float = 0.05,
) -> list[dict]:
    """Three verdict lines for one (dataset, model)'s records, each a dict with "kind",
    the chosen "variant" (None when nothing qualifies), its numbers, the "path" of the file
    to ship, "ties" and a markdown "sentence" with the numbers. Every pick is a deployable
    file LiteRT runs; a simulation that would be smaller or more accurate appears only as
    a what-if after it:

    - "smallest": the smallest deployable variant within `tolerance_pp` of the reference's
      top-1;
    - "most_accurate_under_budget": the most accurate deployable variant no larger than
      the budget (`size_budget_bytes`, else `size_budget_ratio` x the reference's size);
      the variants tied with it by the paired test are candidates too, and the pick among
      them is the most faithful to the reference (output SNR, then top-1 agreement), then
      the smallest, then the fastest;
    - "fastest_deployable": among the deployable variants within tolerance, the one with
      the least median time per image at batch 1 and those whose timings tie with it
      (`speed_tie`), the most faithful, then the smallest; with its batched time.

    Accuracy ties: the exact paired test on the same test images (`credits`: variant ->
    per-image tie-aware credit, quantflow.evaluate.paired; p >= `alpha` is a tie); a
    variant without per-image results ties only at the same top-1."""
    ref = next((r for r in records if r["variant"] == reference), None)
    if ref is None or not _has(ref, "accuracy", "size_bytes") or ref["size_bytes"] <= 0:
        why = (
            f"No `{reference}` in this run"
            if ref is None
            else f"`{reference}` has no top-1 or size in this run"
        )
        why += ": nothing to measure the variants against."
        return [
            _picked(k, None, [], why)
            for k in ("smallest", "most_accurate_under_budget", "fastest_deployable")
        ]
    # Δ against this reference (the records' own delta_accuracy_pp is against tflite-fp32;
    # the same number when that is the reference)
    usable = [
        {
            **r,
            "delta_accuracy_pp": 100.0 * (r["accuracy"] - ref["accuracy"]),
            "size_ratio": r["size_bytes"] / ref["size_bytes"],
        }
        for r in records
        if _has(r, "accuracy", "size_bytes")
    ]
    within = [r for r in usable if r["delta_accuracy_pp"] >= -tolerance_pp - 1e-9]
    ref_text = f"`{reference}` ({100 * ref['accuracy']:.2f}%, {_kib(ref['size_bytes'])})"
    tied = _tie_rule(credits or {}, alpha)
    return [
        _smallest(within, tolerance_pp, ref, ref_text),
        _under_budget(usable, size_budget_bytes, size_budget_ratio, ref, tied, alpha),
        _fastest(within, tolerance_pp, ref_text),
    ]


def _tie_rule(credits: dict, alpha: float):
    """tied(a, b): no significant top-1 difference by the exact paired test (without the
    per-image results of both: the same top-1)."""
    from quantflow.evaluate.paired import paired_test

    def tied(a: dict, b: dict) -> bool:
        ca, cb = credits.get(a["variant"]), credits.get(b["variant"])
        if ca is None or cb is None:
            return a["accuracy"] == b["accuracy"]
        return not paired_test(ca, cb, alpha=alpha)["significant"]

    return tied


def _size_text(record: dict, ref: dict) -> str:
    return f"{_kib(record['size_bytes'])} ({record['size_bytes'] / ref['size_bytes']:.3f}x)"


def _ship(record: dict) -> str:
    path = record.get("model_path")
    return f"; ship `{path}`" if path else ""


def _what_if(record: dict, ref: dict, would: str) -> str:
    return (
        f" What-if: `{record['variant']}`, {_size_text(record, ref)}, {_top1(record)}, "
        f"{would}, is a simulation run in TensorFlow: a runtime that held its format would "
        "give that; it is not a file to ship."
    )


def _smallest(within: list[dict], tolerance_pp: float, ref: dict, ref_text: str) -> dict:
    shipped = [r for r in within if deployable(r)]
    sims = [r for r in within if not deployable(r)]
    if not shipped:
        sentence = f"No deployable variant is within {tolerance_pp:g} pp of {ref_text}."
        if sims:
            sentence += _what_if(_smallest_of(sims), ref, "the smallest within tolerance")
        return _picked("smallest", None, [], sentence)
    best = _smallest_of(shipped)
    ties = [r for r in shipped if r is not best and r["size_bytes"] == best["size_bytes"]]
    sentence = (
        f"**Smallest within {tolerance_pp:g} pp** of {ref_text}: `{best['variant']}`, "
        f"{_size_text(best, ref)}, {_top1(best)}{_ship(best)}."
    )
    if ties:
        sentence += f" The same size: {_names(ties)}."
    smaller = [r for r in sims if r["size_bytes"] < best["size_bytes"]]
    if smaller:
        sentence += _what_if(_smallest_of(smaller), ref, "smaller")
    return _picked("smallest", best, ties, sentence)


def _smallest_of(records: list[dict]) -> dict:
    return min(records, key=lambda r: (r["size_bytes"], -r["accuracy"]))


def _most_accurate_of(records: list[dict]) -> dict:
    return max(records, key=lambda r: (r["accuracy"], -r["size_bytes"]))


def _tie_break(record: dict) -> tuple:
    """Among tied candidates: the most faithful to the reference (output SNR, then top-1
    agreement; equal outputs count as the highest), then the smallest, then the fastest.
    SNR first: it sums the difference over every output of every image, where agreement
    moves by a few images that a paired test would call noise (default run: the int8
    model calibrated on 10 images agrees on 13 more images than the default calibration,
    at 23 dB against 37)."""
    agreement = record.get("agreement")
    snr = record.get("output_snr_db")
    if snr is None and agreement == 1.0:
        snr = math.inf  # the reference's own outputs
    ms = record.get("ms_per_image_b1")
    return (
        -(snr if _number(snr) or snr == math.inf else -math.inf),
        -(agreement if _number(agreement) else 0.0),
        record["size_bytes"],
        ms if _number(ms) else math.inf,
    )


def _under_budget(
    usable: list[dict], budget_bytes, budget_ratio: float, ref: dict, tied, alpha: float
) -> dict:
    budget = budget_bytes if budget_bytes is not None else budget_ratio * ref["size_bytes"]
    budget_text = f"{_kib(budget)}" + (
        "" if budget_bytes is not None else f", {budget_ratio:g}x `{ref['variant']}`"
    )
    fits = [r for r in usable if r["size_bytes"] <= budget]
    shipped = [r for r in fits if deployable(r)]
    sims = [r for r in fits if not deployable(r)]
    if not shipped:
        sentence = f"No deployable variant fits the size budget of {budget_text}."
        if sims:
            sentence += _what_if(_most_accurate_of(sims), ref, "the most accurate under it")
        return _picked("most_accurate_under_budget", None, [], sentence)
    top = _most_accurate_of(shipped)
    candidates = [top] + [r for r in shipped if r is not top and tied(r, top)]
    best = min(candidates, key=_tie_break)
    ties = [r for r in candidates if r is not best]
    sentence = (
        f"**Most accurate under {budget_text}**: `{best['variant']}`, "
        f"{_top1(best)}, {_kib(best['size_bytes'])}{_ship(best)}."
    )
    if ties:
        sentence += (
            f" Tied with it by the paired test (p >= {alpha:g}): {_names(ties)}; chosen "
            "among them by fidelity to the reference, then size, then speed."
        )
    better = [r for r in sims if r["accuracy"] > best["accuracy"] and not tied(r, best)]
    if better:
        sentence += _what_if(_most_accurate_of(better), ref, "more accurate")
    return _picked("most_accurate_under_budget", best, ties, sentence)


def _iqr(record: dict) -> bool:
    iqr = record.get("ms_per_image_b1_iqr")
    return isinstance(iqr, (list, tuple)) and len(iqr) == 2 and all(_number(v) for v in iqr)


def speed_tie(a: dict, b: dict) -> bool:
    """Two batch-1 timings tie when their interquartile ranges overlap (without ranges,
    when within LATENCY_TIE of each other)."""
    if _iqr(a) and _iqr(b):
        (a_low, a_high), (b_low, b_high) = a["ms_per_image_b1_iqr"], b["ms_per_image_b1_iqr"]
        return a_low <= b_high and b_low <= a_high
    low, high = sorted((a["ms_per_image_b1"], b["ms_per_image_b1"]))
    return high <= low * (1 + LATENCY_TIE)


def _fastest(within: list[dict], tolerance_pp: float, ref_text: str) -> dict:
    timed = [r for r in within if deployable(r) and _has(r, "ms_per_image_b1")]
    if not timed:
        return _picked(
            "fastest_deployable",
            None,
            [],
            f"No deployable variant with a timing is within {tolerance_pp:g} pp " f"of {ref_text}.",
        )
    fastest = min(timed, key=lambda r: r["ms_per_image_b1"])
    candidates = [fastest] + [r for r in timed if r is not fastest and speed_tie(r, fastest)]
    best = min(candidates, key=_tie_break)
    ties = [r for r in candidates if r is not best]
    batched = (
        f", {best['ms_per_image_batched']:.4f} ms batched"
        if _has(best, "ms_per_image_batched")
        else ""
    )
    sentence = (
        f"**Fastest deployable within {tolerance_pp:g} pp**: `{best['variant']}`, "
        f"{best['ms_per_image_b1']:.3f} ms per image at batch 1{batched}, {_top1(best)}, "
        f"{_kib(best['size_bytes'])}{_ship(best)}."
    )
    if _iqr(best):
        low, high = best["ms_per_image_b1_iqr"]
        sentence = sentence[:-1] + f" (interquartile range {low:.3f}-{high:.3f} ms)."
    if ties:
        sentence += (
            f" As fast by their timings' interquartile ranges, which overlap the fastest's "
            f"(`{fastest['variant']}`): {_names([r for r in ties])}; chosen among them by "
            "fidelity to the reference, then size."
            if _iqr(fastest)
            else f" Within {100 * LATENCY_TIE:.0f}% of the fastest's time (a tie on a shared "
            f"machine): {_names(ties)}."
        )
    fast_batched = [r for r in timed if _has(r, "ms_per_image_batched")]
    if fast_batched:
        top = min(fast_batched, key=lambda r: r["ms_per_image_batched"])
        if top is not best:
            sentence += (
                f" Batched, `{top['variant']}` is fastest: "
                f"{top['ms_per_image_batched']:.4f} ms per image."
            )
    return _picked("fastest_deployable", best, ties, sentence)


def grouped_rows(records: list[dict]) -> list[dict]:
    """The records in `families()` order (stable within a family), each with "family" and
    "first_in_family" added, for a table grouped by method."""
    order = families()
    ranked = sorted(
        enumerate(records), key=lambda ir: (order.index(family(ir[1]["variant"])), ir[0])
    )
    rows, seen = [], set()
    for _, record in ranked:
        fam = family(record["variant"])
        rows.append({**record, "family": fam, "first_in_family": fam not in seen})
        seen.add(fam)
    return rows


def _best(records: list[dict], keep) -> dict | None:
    pool = [r for r in records if keep(r) and _has(r, "accuracy")]
    return max(pool, key=lambda r: r["accuracy"]) if pool else None


def cross_model_rows(
    records_by_model: dict,
    tolerance_pp: float = 0.5,
    size_budget_ratio: float = 0.3,
    size_budget_bytes: float | None = None,
    reference: str = REFERENCE_VARIANT,
    credits: dict | None = None,
    alpha: float = 0.05,
) -> list[dict]:
    """One row per (dataset, model) of `records_by_model` ((dataset, model) -> records): the
    reference's top-1 and size, int8 PTQ's Δ, the best FAT variant (highest top-1 among the
    deployable fat-<scheme>, else among the fat-<scheme>-sim simulations) and adjustable
    variant (highest top-1 of adjq-<target> and adjq-<target>-int8) with their Δ, and the
    three verdict picks (the dicts of `verdict`, under their "kind"). Missing -> None."""
    rows = []
    for (dataset, model), records in records_by_model.items():
        by_name = {r["variant"]: r for r in records}
        ref = by_name.get(reference) or {}
        fat = _best(records, lambda r: family(r["variant"]) == "FAT" and deployable(r)) or _best(
            records, lambda r: family(r["variant"]) == "FAT"
        )
        adjq = _best(records, lambda r: family(r["variant"]) == "adjustable")
        picks = {
            v["kind"]: v
            for v in verdict(
                records,
                tolerance_pp,
                size_budget_bytes,
                size_budget_ratio,
                reference,
                credits=(credits or {}).get((dataset, model)),
                alpha=alpha,
            )
        }
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "reference_accuracy": ref.get("accuracy"),
                "reference_size_bytes": ref.get("size_bytes"),
                "int8_delta_pp": (by_name.get("tflite-int8") or {}).get("delta_accuracy_pp"),
                "fat_variant": fat["variant"] if fat else None,
                "fat_delta_pp": fat.get("delta_accuracy_pp") if fat else None,
                "adjustable_variant": adjq["variant"] if adjq else None,
                "adjustable_delta_pp": adjq.get("delta_accuracy_pp") if adjq else None,
                "adjustable_score": adjq.get("score") if adjq else None,
                **{kind: pick for kind, pick in picks.items()},
            }
        )
    return rows


def plot_accuracy_vs(
    records: list[dict],
    path: str | Path,
    x: str = "size_bytes",
    tolerance_pp: float = 0.5,
    reference: str = REFERENCE_VARIANT,
) -> None:
    """Top-1 against size (KiB, log scale) or MicroNet score (log scale) of every record
    that has both, one panel per (dataset, model): markers and colours by method family,
    filled for deployable variants and hollow for simulations, the Pareto front (smaller x
    and higher top-1) as a step line with its points circled and named, a dashed line
    `tolerance_pp` below the reference. Variants more than FLOOR_PP below the reference
    are left out (counted in the panel's title; their numbers are in the tables), and the
    front is that of the variants shown."""
    if x not in ("size_bytes", "score"):
        raise ValueError(f"x must be 'size_bytes' or 'score', not {x!r}")
    label = "size (KiB, log scale)" if x == "size_bytes" else "MicroNet score (log scale; fp32 = 2)"
    scale = 1 / 1024 if x == "size_bytes" else 1.0
    groups: dict = {}
    for r in records:
        if _has(r, x, "accuracy") and r[x] > 0:
            groups.setdefault((r["dataset"], r["model"]), []).append(r)
    fig = _figure((7.5 * max(len(groups), 1), 5.5))
    if not groups:
        ax = fig.add_subplot()
        ax.text(
            0.5,
            0.5,
            f"no variant with a {'size' if x == 'size_bytes' else 'score'}",
            ha="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
        fig.savefig(path, dpi=120, format="png")
        return
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, ((dataset, model), rows) in zip(axes, groups.items()):
        ref = next((r for r in rows if r["variant"] == reference), None)
        tops = [100 * r["accuracy"] for r in rows]
        floor = (100 * ref["accuracy"] - FLOOR_PP) if ref else min(tops)
        low = max(min(tops), floor) - 0.3
        high = max(tops) + 0.3
        shown = [r for r, t in zip(rows, tops) if t >= low]
        below = len(rows) - len(shown)
        rows = shown
        xs = [r[x] * scale for r in rows]
        ys = [100 * r["accuracy"] for r in rows]
        for fam in families():
            marker, colour = style(fam)
            for shipped in (True, False):
                idx = [
                    i
                    for i, r in enumerate(rows)
                    if family(r["variant"]) == fam and deployable(r) == shipped
                ]
                if idx:
                    ax.scatter(
                        [xs[i] for i in idx],
                        [ys[i] for i in idx],
                        marker=marker,
                        s=40,
                        zorder=3,
                        color=colour if shipped else "none",
                        edgecolors=colour,
                        linewidths=1.3,
                        label=f"{fam} ({'LiteRT' if shipped else 'TensorFlow'})",
                    )
        front = sorted(pareto_front(zip(xs, ys)), key=lambda i: (xs[i], ys[i]))
        ax.step(
            [xs[i] for i in front],
            [ys[i] for i in front],
            where="post",
            color="black",
            linewidth=1,
            zorder=2,
            label="Pareto front",
        )
        ax.scatter(
            [xs[i] for i in front],
            [ys[i] for i in front],
            s=150,
            facecolors="none",
            edgecolors="black",
            linewidths=1,
            zorder=4,
        )
        named: dict = {}
        for i in front:
            named.setdefault((xs[i], ys[i]), []).append(rows[i]["variant"])
        for xy, names in named.items():
            ax.annotate(
                ", ".join(names), xy, xytext=(4, -10), textcoords="offset points", fontsize=7
            )
        if ref:
            ax.axhline(
                100 * ref["accuracy"] - tolerance_pp,
                linestyle="--",
                color="grey",
                linewidth=1,
                label=f"{reference} - {tolerance_pp:g} pp",
            )
        ax.set_xscale("log")
        ax.set_ylim(min(ys, default=low) - 0.3, high)
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 accuracy (%)")
        title = f"{dataset} / {model}"
        if below:
            title += (
                f" ({below} variant{'s' if below > 1 else ''} more than {FLOOR_PP:g} pp "
                f"below {reference} not shown)"
            )
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right")
    what = "size" if x == "size_bytes" else "MicroNet score"
    fig.suptitle(f"Top-1 accuracy against {what}: every variant")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
