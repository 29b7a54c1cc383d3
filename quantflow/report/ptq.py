"""The post-training quantization part of the report: the TFLite lab's four questions,
answered in sentences generated from a run's records (never fixed text), and the plot of
int8 quality against calibration size.

    study = ptq_study(records, info, training)   # one (dataset, model)'s records
    study["sentences"]                           # the answers, in order
    plot_calibration([study, ...], path)

A difference of at most `TIE_IMAGES` test images is called a tie, whatever its sign.
"""

from __future__ import annotations

import math

from pathlib import Path

from quantflow.variants import parse

TIE_IMAGES = 5


def _family(variant: str) -> str | None:
    v = parse(variant)
    return v.family.key if v else None


def _field(variant: str, key: str, name: str):
    """A field of `variant` if it is of family `key` (quantflow.variants), else None."""
    v = parse(variant)
    return v.fields[name] if v and v.family.key == key else None


def faster(reference_ms: float, ms: float) -> str:
    """'2.3x faster' / '1.4x slower' (reference time / time, or its inverse)."""
    ratio = reference_ms / ms
    return f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"


def image_count(pp: float, num_samples) -> int | None:
    """How many test images `pp` percentage points of top-1 are (None without a count)."""
    if not num_samples or num_samples <= 0:
        return None
    return int(round(abs(pp) * num_samples / 100.0))


def compare(
    pp: float,
    num_samples: int,
    better: str = "higher",
    worse: str = "lower",
    paired: dict | None = None,
) -> str:
    """'a tie (...)' or '<better|worse> by x pp (...)': by the exact paired test when its
    result `paired` is given (quantflow.evaluate.paired: p and the images that differ),
    else (no per-image results) within TIE_IMAGES test images."""
    n = image_count(pp, num_samples)
    if paired is not None:
        detail = f"p {paired['p']:.2g}, {paired['differ']} images differ"
        if not paired["significant"]:
            return f"a tie ({pp:+.2f} pp; {detail})"
        return f"{better if pp > 0 else worse} by {abs(pp):.2f} pp ({n} test images; {detail})"
    if n <= TIE_IMAGES:
        return f"a tie ({pp:+.2f} pp, {n} test image{'s' if n != 1 else ''})"
    return f"{better if pp > 0 else worse} by {abs(pp):.2f} pp ({n} test images)"


def calibration_points(records: list[dict], train_size: int | None) -> list[dict]:
    """The calibration-size study: {variant, images, accuracy, g_mean} sorted by images
    (P percent -> round(P% of the training set), as the conversion computes it)."""
    points = []
    for r in records:
        number, percent = (
            _field(r["variant"], "int8-cal", "images"),
            _field(r["variant"], "int8-calpct", "percent"),
        )
        if percent is not None:
            if not train_size:
                continue
            images = max(1, int(round(train_size * percent / 100)))
        elif number is not None:
            images = min(number, train_size) if train_size else number
        else:
            continue
        points.append(
            {
                "variant": r["variant"],
                "images": images,
                "accuracy": r["accuracy"],
                "g_mean": r["g_mean"],
                "output_snr_db": r.get("output_snr_db"),
            }
        )
    return sorted(points, key=lambda p: (p["images"], p["variant"]))


def _fidelity(points: list[dict]) -> str:
    """The calibration study's output SNR against tflite-fp32 at each size, or ''."""
    snr = [(p["images"], p["output_snr_db"]) for p in points if p.get("output_snr_db") is not None]
    if len(snr) < 2:
        return ""
    listed = ", ".join(f"{v:.1f} dB at {n}" for n, v in snr)
    return (
        f" Fidelity to tflite-fp32 (output SNR, higher is closer): {listed} images; "
        f"{snr[-1][1] - snr[0][1]:+.1f} dB from the fewest to the most calibration images."
    )


def _trend(points: list[dict], key: str, num_samples: int, paired=None) -> str:
    """How `key` moves with the calibration size. With `paired` (variant, variant ->
    the exact paired test's result, or None), top-1 is flat when its best and worst
    calibration sizes tie by the test; otherwise (G-mean, or no per-image results) when
    they are within TIE_IMAGES test images."""
    first, last = points[0], points[-1]
    values = [p[key] for p in points]
    pp = 100.0 * (last[key] - first[key])
    spread = 100.0 * (max(values) - min(values))
    best, worst = max(points, key=lambda p: p[key]), min(points, key=lambda p: p[key])
    test = paired(best["variant"], worst["variant"]) if paired else None
    if test is not None and not test["significant"]:
        return (
            f"flat: the best and worst calibration sizes ({best['images']} and "
            f"{worst['images']} images, {spread:.2f} pp apart) tie by the paired test "
            f"(p {test['p']:.2g}, {test['differ']} images differ)"
        )
    if test is None and image_count(spread, num_samples) <= TIE_IMAGES:
        return f"flat: every calibration size within {image_count(spread, num_samples)} test images (a tie)"
    steps = [b - a for a, b in zip(values, values[1:])]
    if all(s >= 0 for s in steps):
        shape = "rises with the calibration size"
    elif all(s <= 0 for s in steps):
        shape = "falls with the calibration size"
    else:
        shape = "is not monotonic in the calibration size"
    return (
        f"{shape}: {100 * first[key]:.2f}% at {first['images']} images, "
        f"{100 * last[key]:.2f}% at {last['images']} ({pp:+.2f} pp), spread "
        f"{spread:.2f} pp ({image_count(spread, num_samples)} test images)"
    )


def ptq_study(
    records: list[dict],
    info: dict | None = None,
    training: dict | None = None,
    credits: dict | None = None,
    alpha: float = 0.05,
) -> dict:
    """The lab's questions for one (dataset, model): {"sentences": [...], "points": the
    calibration study, "dataset", "model"}. `records`: that model's variant records (with
    add_comparisons' fields); `info`: its dataset's info.json; `training`: train.json;
    `credits`: variant -> per-image tie-aware credit, whose exact paired test decides every
    win and tie (without them: TIE_IMAGES test images)."""
    from quantflow.evaluate.paired import paired_test

    credits = credits or {}

    def paired(a: dict, b: dict) -> dict | None:
        ca, cb = credits.get(a["variant"]), credits.get(b["variant"])
        return None if ca is None or cb is None else paired_test(ca, cb, alpha=alpha)

    def paired_names(a: str, b: str) -> dict | None:
        return paired(by[a], by[b])

    def judge(a: dict, b: dict) -> str:
        return compare(100.0 * (a["accuracy"] - b["accuracy"]), n, paired=paired(a, b))

    by = {r["variant"]: r for r in records}
    sentences: list[str] = []
    first = records[0]
    n = int(first["num_samples"])
    train_size = ((info or {}).get("sizes") or {}).get("train")
    native, fp32 = by.get("keras-float"), by.get("tflite-fp32")
    if native and fp32:
        sentences.append(
            f"tflite-fp32 against the native Keras model: top-1 {100 * fp32['accuracy']:.2f}% "
            f"vs {100 * native['accuracy']:.2f}%, {judge(fp32, native)}; G-mean "
            f"{100 * fp32['g_mean']:.2f}% vs {100 * native['g_mean']:.2f}%. At batch 1 LiteRT "
            f"takes {fp32['ms_per_image_b1']:.3f} ms per image, Keras "
            f"{native['ms_per_image_b1']:.3f} ms ("
            f"{faster(native['ms_per_image_b1'], fp32['ms_per_image_b1'])} in LiteRT)."
        )
    int8 = [
        r
        for r in records
        if _family(r["variant"]) in ("int8", "int8-cal", "int8-calpct", "int8-class")
    ]
    if fp32 and int8:
        top = max(int8, key=lambda r: (r["accuracy"], r["g_mean"]))
        # those the paired test cannot tell from the most accurate: the most faithful to
        # tflite-fp32 of them (output SNR, then top-1 agreement: verdict._tie_break) is the
        # best
        tied = [r for r in int8 if r is not top and (p := paired(r, top)) and not p["significant"]]
        best = max(
            [top, *tied],
            key=lambda r: (
                r.get("output_snr_db") or -math.inf,
                r.get("agreement") or 0.0,
                r["accuracy"],
            ),
        )
        ratio = best["size_bytes"] / fp32["size_bytes"]
        chosen = ""
        if tied:
            chosen = (
                f" ({len(tied)} other int8 model{'s' if len(tied) != 1 else ''} tie at the top "
                f"by the paired test; this one is the closest to tflite-fp32's outputs"
                + (
                    f": output SNR {best['output_snr_db']:.1f} dB"
                    if best.get("output_snr_db") is not None
                    else ""
                )
                + (
                    f", the same top-1 on {100 * best['agreement']:.2f}% of the images"
                    if best.get("agreement")
                    else ""
                )
                + ")"
            )
        sentences.append(
            f"The best int8 model, {best['variant']}{chosen}, against tflite-fp32: top-1 "
            f"{100 * best['accuracy']:.2f}% vs {100 * fp32['accuracy']:.2f}%, "
            f"{judge(best, fp32)}; {ratio:.2f} of its size; "
            f"{faster(fp32['ms_per_image_b1'], best['ms_per_image_b1'])} at batch 1."
        )
    points = calibration_points(records, train_size)
    if len(points) >= 2:
        sentences.append(
            f"int8 quality against calibration size ({len(points)} sizes, "
            f"{points[0]['images']} to {points[-1]['images']} training images): top-1 "
            f"{_trend(points, 'accuracy', n, paired_names)}; "
            f"G-mean {_trend(points, 'g_mean', n)}.{_fidelity(points)}"
        )
    names = (info or {}).get("class_names") or []
    base = by.get("tflite-int8")
    for r in records:
        k = _field(r["variant"], "int8-class", "label")
        if k is None:
            continue
        name = f" ({names[k]})" if k < len(names) else ""
        parts = []
        if base:
            parts.append(
                f"{judge(r, base)} against "
                f"tflite-int8 ({100 * base['accuracy']:.2f}%, calibrated on every "
                "class)"
            )
        if points:
            low = min(p["accuracy"] for p in points)
            high = max(p["accuracy"] for p in points)
            where = (
                "inside"
                if low <= r["accuracy"] <= high
                else "above" if r["accuracy"] > high else "below"
            )
            parts.append(
                f"{where} the calibration-size study's range " f"{100 * low:.2f}-{100 * high:.2f}%"
            )
        if base and r.get("output_snr_db") is not None and base.get("output_snr_db") is not None:
            parts.append(
                f"output SNR against tflite-fp32 {r['output_snr_db']:.1f} dB vs "
                f"{base['output_snr_db']:.1f} dB for tflite-int8"
            )
        sentences.append(
            f"Calibrated on class {k}{name} only, int8 reaches {100 * r['accuracy']:.2f}% "
            f"top-1 (G-mean {100 * r['g_mean']:.2f}%): {'; '.join(parts) or 'nothing to compare'}."
        )
    fallback = sorted(
        (k, r) for r in records if (k := _field(r["variant"], "float-fallback", "k")) is not None
    )
    if base and fallback:
        parts = []
        for k, r in fallback:
            parts.append(
                f"{k} layer{'s' if k != 1 else ''}: {100 * r['accuracy']:.2f}%, "
                f"{judge(r, base)}, "
                f"{r['size_bytes'] / base['size_bytes']:.2f}x the size, "
                f"{r['ms_per_image_b1'] / base['ms_per_image_b1']:.2f}x the time per image"
            )
        sentences.append(
            "Leaving the layers the per-layer diagnosis of tflite-int8 finds worst in float "
            f"(against tflite-int8, {100 * base['accuracy']:.2f}%): " + "; ".join(parts) + "."
        )
    params = (training or {}).get("params")
    if fp32 and base:
        ratio = base["size_bytes"] / fp32["size_bytes"]
        lead = f"The float model has {params:,} parameters; " if params else ""
        sentences.append(
            f"{lead}fp32 TFLite {fp32['size_bytes'] / 1024:.1f} KiB, int8 "
            f"{base['size_bytes'] / 1024:.1f} KiB: {1 / ratio:.1f}x smaller (a "
            f"{100 * (1 - ratio):.0f}% size reduction)."
        )
    return {
        "dataset": first["dataset"],
        "model": first["model"],
        "sentences": sentences,
        "points": points,
    }


def plot_calibration(studies: list[dict], path: str | Path) -> None:
    """Top-1 and G-mean of the calibration-size study against the number of calibration
    images (log scale), one line pair per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for study in studies:
        points = study["points"]
        if not points:
            continue
        x = [p["images"] for p in points]
        label = f"{study['dataset']} / {study['model']}"
        ax.plot(x, [100 * p["accuracy"] for p in points], "o-", label=f"{label}: top-1")
        ax.plot(x, [100 * p["g_mean"] for p in points], "s--", label=f"{label}: G-mean")
        drawn = True
    if drawn:
        ax.set_xscale("log")
        ax.set_xlabel("calibration images (log scale)")
        ax.set_ylabel("%")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no calibration-size study in this run", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("int8 post-training quantization: quality against calibration size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plotted(variant: str) -> bool:
    """The int8 models the per-layer plot draws (the calibration studies only in the table)."""
    v = parse(variant)
    return bool(v and v.family.int8 and not v.family.study)


def diagnosis_rows(diagnoses: list[dict], worst: int = 3) -> list[dict]:
    """One row per diagnosed variant: its output SNR and its `worst` layers (those that
    add the most error) with op type, scale, SNR and added noise."""
    rows = []
    for d in diagnoses:
        layers = [d["layers"][i] for i in d["worst"][:worst]]
        rows.append(
            {
                "dataset": d.get("dataset"),
                "model": d.get("model"),
                "variant": d["variant"],
                "output_snr_db": d["output_snr_db"],
                "images": d["images"],
                "worst": layers,
            }
        )
    return rows


def plot_diagnosis(diagnoses: list[dict], path: str | Path) -> None:
    """SNR of every op's output against the fp32 model, in network order, one line per
    int8 model (PTQ, FAT and adjustable exports side by side), one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list] = {}
    for d in diagnoses:
        if plotted(d["variant"]):
            groups.setdefault((d.get("dataset"), d.get("model")), []).append(d)
    fig, axes = plt.subplots(
        max(1, len(groups)), 1, figsize=(9, 3.8 * max(1, len(groups))), squeeze=False
    )
    if not groups:
        axes[0][0].text(0.5, 0.5, "no int8 model diagnosed in this run", ha="center")
        axes[0][0].set_axis_off()
    for ax, ((dataset, model), items) in zip(axes[:, 0], groups.items()):
        for d in items:
            x = [row["index"] for row in d["layers"]]
            ax.plot(
                x,
                [row["snr_db"] for row in d["layers"]],
                marker="o",
                markersize=3,
                label=d["variant"],
            )
        labels = [f"{row['layer'][-18:]} ({row['op'][:4]})" for row in items[0]["layers"]]
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=75, fontsize=6)
        ax.set_ylabel("SNR vs fp32 (dB)")
        ax.set_title(f"{dataset} / {model}: per-layer SNR of the int8 models", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
