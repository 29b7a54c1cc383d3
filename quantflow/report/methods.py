"""The per-method sections of the summary: weight-only, FAT and adjustable tables and plots,
the Pareto front."""

from __future__ import annotations

from pathlib import Path

from quantflow import variants
from quantflow.report.records import REFERENCE_VARIANT


def weightquant_rows(records: list[dict], errors: list[dict]) -> list[dict]:
    """One row per weight-only quantized variant: its accuracy record joined with the
    error summary of its checkpoint (relative errors in percent), sorted by dataset, model,
    algorithm, bits."""
    by_variant = {(r["dataset"], r["model"], r["variant"]): r for r in records}
    rows = []
    for e in errors:
        name = variants.name("weight-only", algorithm=e["algorithm"], bits=e["bits"])
        record = by_variant.get((e["dataset"], e["model"], name))
        if record:
            rows.append(
                {
                    **record,
                    "algorithm": e["algorithm"],
                    "bits": e["bits"],
                    "error_min_pct": e["relative_error_pct_min"],
                    "error_mean_pct": e["relative_error_pct_mean"],
                    "error_max_pct": e["relative_error_pct_max"],
                    "affine_exact": (
                        None
                        if "affine_exact" not in e
                        else [sum(e["affine_exact"].values()), len(e["affine_exact"])]
                    ),
                }
            )
    return sorted(rows, key=lambda r: (r["dataset"], r["model"], r["algorithm"], r["bits"]))


def plot_accuracy_vs_bits(rows: list[dict], records: list[dict], path: str | Path) -> None:
    """Top-1 accuracy against bit width, one line per (model, algorithm), with the float
    reference of each model as a dashed line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for key in dict.fromkeys((r["dataset"], r["model"], r["algorithm"]) for r in rows):
        line = [r for r in rows if (r["dataset"], r["model"], r["algorithm"]) == key]
        ax.plot(
            [r["bits"] for r in line],
            [100 * r["accuracy"] for r in line],
            marker="o",
            label=f"{key[1]} {key[2]}",
        )
    for r in records:
        if r["variant"] == REFERENCE_VARIANT:
            ax.axhline(
                100 * r["accuracy"],
                linestyle="--",
                color="grey",
                label=f"{r['model']} {REFERENCE_VARIANT}",
            )
    if not rows:
        ax.text(
            0.5, 0.5, "no weight-only quantization configured", ha="center", transform=ax.transAxes
        )
    ax.set_xlabel("bits per weight")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Weight-only quantization: accuracy against bit width")
    ax.grid(alpha=0.3)
    if rows:
        ax.set_xticks(sorted({r["bits"] for r in rows}))
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")


def fat_rows(records: list[dict], summaries: list[dict], checks: list[dict]) -> list[dict]:
    """One row per (dataset, model, FAT scheme): the threshold training summary (fat.json,
    with "dataset" and "model" added), the int8 TFLite check (tflite.json) when exported,
    the metrics of fat-<scheme> (TFLite) and fat-<scheme>-sim (simulation), and the fp32
    TFLite and int8 PTQ (`tflite-int8`) records of the same model to compare with; in the
    order of `summaries`."""
    by_variant = {(r["dataset"], r["model"], r["variant"]): r for r in records}
    by_check = {(c["dataset"], c["model"], c["scheme"]): c for c in checks}
    rows = []
    for s in summaries:
        key = (s["dataset"], s["model"])
        fp32 = by_variant.get((*key, REFERENCE_VARIANT))
        ptq = by_variant.get((*key, "tflite-int8"))
        tflite = by_variant.get((*key, variants.name("fat", scheme=s["scheme"])))
        sim = by_variant.get((*key, variants.name("fat-sim", scheme=s["scheme"])))
        deployed = tflite or sim

        def delta(a, b):
            return 100.0 * (a["accuracy"] - b["accuracy"]) if a and b else None

        rows.append(
            {
                **s,
                "fp32": fp32,
                "ptq": ptq,
                "tflite": tflite,
                "sim": sim,
                "check": by_check.get((*key, s["scheme"])),
                "runs_on": "LiteRT int8" if tflite else "simulation (fake-quant Keras)",
                "delta_fp32_pp": delta(deployed, fp32),
                "delta_ptq_pp": delta(deployed, ptq),
                "delta_sim_pp": delta(tflite, sim),
            }
        )
    return rows  # in the order of `summaries`: the configured models and schemes


def _figure(size=(7, 4.5)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def plot_fat_rmse(histories: dict, path: str | Path) -> None:
    """Held-out RMSE between float and fake-quant logits against the epoch (0: calibrated
    thresholds), one line per (model, scheme); `histories` maps a label to history rows."""
    fig = _figure()
    ax = fig.add_subplot()
    for label, rows in histories.items():
        ax.plot(
            [int(r["epoch"]) for r in rows],
            [float(r["val_rmse"]) for r in rows],
            marker="o",
            label=label,
        )
    if histories:
        ax.set_yscale("log")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no FAT scheme configured", ha="center", transform=ax.transAxes)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (0: calibrated thresholds)")
    ax.set_ylabel("held-out logits RMSE (float vs quantized)")
    ax.set_title("FAT threshold training")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")


def plot_fat_alphas(alphas: dict, path: str | Path) -> None:
    """Histograms of the trained alphas (threshold / calibrated maximum), weights and
    activations side by side, one series per (model, scheme)."""
    import numpy as np

    fig = _figure((9, 4))
    axes = fig.subplots(1, 2, sharey=False)
    bins = np.linspace(0.5, 1.0, 26)
    for ax, kind in zip(axes, ("weight", "activation")):
        for label, values in alphas.items():
            if values[kind].size:
                ax.hist(
                    np.clip(values[kind], 0.5, 1.0),
                    bins=bins,
                    histtype="step",
                    linewidth=1.5,
                    label=f"{label} ({values[kind].size})",
                )
        ax.set_xlabel("trained alpha (threshold / calibrated max)")
        ax.set_ylabel("count")
        ax.set_title(
            f"{kind} thresholds" + (" (per channel or tensor)" if kind == "weight" else "")
        )
        if kind == "weight":  # thousands of channels, most at 1
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if alphas:
            ax.legend(fontsize=7)
    if not alphas:
        axes[0].text(0.5, 0.5, "no FAT scheme configured", ha="center", transform=axes[0].transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")


def _delta_pp(record: dict | None, ref: dict | None) -> float | None:
    """The record's top-1 change against the reference in percentage points: the
    `delta_accuracy_pp` that `add_comparisons` added when it is there, else computed."""
    if record is None:
        return None
    if "delta_accuracy_pp" in record:
        return record["delta_accuracy_pp"]
    if ref is None or record.get("accuracy") is None or ref.get("accuracy") is None:
        return None
    return 100.0 * (record["accuracy"] - ref["accuracy"])


def adjustable_rows(records: list[dict], summaries: list[dict], checks: list[dict]) -> list[dict]:
    """One row per adjustable target of each (dataset, model), in the order of `summaries`:
    the training summary (adjustable.json with "dataset", "model" and "target" added), the
    metrics of adjq-<target> (the simulated mixed-precision Keras model) and
    adjq-<target>-int8 (the int8 TFLite model), their top-1 change against the reference
    variant in percentage points, and the int8 TFLite check (tflite.json). Anything missing
    is None."""
    by_variant = {(r["dataset"], r["model"], r["variant"]): r for r in records}
    by_check = {(c["dataset"], c["model"], c["target"]): c for c in checks}
    rows = []
    for s in summaries:
        key = (s["dataset"], s["model"])
        target = s["target"]
        ref = by_variant.get((*key, REFERENCE_VARIANT))
        sim = by_variant.get((*key, variants.name("adjq", target=target)))
        int8 = by_variant.get((*key, variants.name("adjq-int8", target=target)))
        check = by_check.get((*key, target)) or {}
        settings = s.get("settings") or {}
        score = s.get("score") or (sim or {})
        packed = s.get("packed") or {}
        swa = s.get("swa") or {}
        min_bits, max_bits = settings.get("min_bits"), settings.get("max_bits")
        int8_bytes = int8["size_bytes"] if int8 else check.get("size_bytes")
        packed_bytes = packed.get("file_bytes")
        rows.append(
            {
                "dataset": s["dataset"],
                "model": s["model"],
                "target": target,
                "metric_weight": settings.get("metric_weight"),
                "target_score": settings.get("target_score"),
                "bounds": (
                    f"{min_bits}..{max_bits}"
                    if min_bits is not None and max_bits is not None
                    else None
                ),
                "num_samples": next(
                    (r["num_samples"] for r in (sim, int8, ref) if r and "num_samples" in r),
                    None,
                ),
                "sim_accuracy": sim["accuracy"] if sim else None,
                "sim_delta_pp": _delta_pp(sim, ref),
                "int8_accuracy": int8["accuracy"] if int8 else None,
                "int8_delta_pp": _delta_pp(int8, ref),
                "score": score.get("score"),
                "parameter_score": score.get("parameter_score"),
                "operation_score": score.get("operation_score"),
                "mean_weight_bits": score.get("mean_weight_bits"),
                "mean_activation_bits": score.get("mean_activation_bits"),
                "packed_kib": packed_bytes / 1024 if packed_bytes is not None else None,
                "packed": packed,
                "int8_kib": int8_bytes / 1024 if int8_bytes is not None else None,
                "int8_agreement": check.get("top1_agreement"),
                "swa_used": swa.get("used"),
                "seconds": s.get("seconds"),
            }
        )
    return rows


BIT_WIDTHS = range(1, 17)


def _bit_colour(bits: int):
    """One colour per bit width 1..16, the same in every figure."""
    from matplotlib import colormaps

    return colormaps["viridis"]((bits - 1) / 15)


def plot_bits_per_layer(quant_infos: dict, kind: str, path: str | Path) -> None:
    """For each label ("<model> <target>") of `quant_infos` (quant_info.json dicts), one
    horizontal stacked bar per layer ("weights") or activation tensor ("activations") in
    network order: the share of its channels at each bit width, with its mean bits."""
    import numpy as np

    if kind not in ("weights", "activations"):
        raise ValueError(f"kind must be 'weights' or 'activations', not {kind!r}")
    what = "weight" if kind == "weights" else "activation"
    tensors = {label: info.get(kind) or {} for label, info in quant_infos.items()}
    heights = [max(len(t), 1) for t in tensors.values()]
    fig = _figure((8, min(1.5 + sum(0.22 * h + 0.8 for h in heights), 60)))
    if not quant_infos:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no adjustable targets", ha="center", transform=ax.transAxes)
        ax.set_axis_off()
        ax.set_title(f"Adjustable quantization: {what} bits per channel")
        fig.savefig(path, dpi=120, format="png")
        return
    fig.set_layout_engine("constrained")
    axes = fig.subplots(len(tensors), 1, squeeze=False, height_ratios=heights)[:, 0]
    used = set()
    for ax, (label, layers) in zip(axes, tensors.items()):
        names = list(layers)
        for y, name in enumerate(names):
            bits = np.asarray(layers[name]["bits"], dtype=int)
            if not bits.size:
                continue
            left = 0.0
            for b in BIT_WIDTHS:
                share = float(np.mean(bits == b))
                if share:
                    ax.barh(y, share, left=left, color=_bit_colour(b), height=0.8)
                    left += share
                    used.add(b)
            ax.text(1.01, y, f"{bits.mean():.2f}", va="center", fontsize=6)
        if not names:
            ax.text(0.5, 0.5, f"no {what} tensors", ha="center", transform=ax.transAxes)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([n if len(n) <= 40 else "…" + n[-39:] for n in names], fontsize=6)
        if names:
            ax.set_ylim(len(names) - 0.5, -0.5)  # network order from the top
        ax.set_xlim(0, 1.08)
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_title(f"{label} (right: mean bits)", fontsize=9)
    axes[-1].set_xlabel("share of channels")
    if used:
        from matplotlib.patches import Patch

        handles = [Patch(color=_bit_colour(b), label=f"{b} bit") for b in sorted(used)]
        fig.legend(handles=handles, loc="outside lower center", fontsize=7, ncols=8)
    fig.suptitle(f"Adjustable quantization: {what} bits per channel")
    fig.savefig(path, dpi=120, format="png")


def pareto_front(points) -> list[int]:
    """Indices (ascending) of the (score, accuracy) pairs that no other pair dominates:
    lower score and higher accuracy are better; a pair is dominated by one at least as good
    in both and better in one, so identical pairs are both on the front."""
    points = [(float(s), float(a)) for s, a in points]
    return [
        i
        for i, (s, a) in enumerate(points)
        if not any(t <= s and b >= a and (t < s or b > a) for t, b in points)
    ]


def plot_recall_change(groups: list[dict], reference: str, path: str | Path) -> None:
    """Per-class recall of every variant minus the reference's, in percentage points, as
    one heatmap per dataset / model (rows: variants in table order, columns: classes;
    red: the variant loses recall on that class, blue: gains; the colour scale is
    symmetric and clipped at the largest change among the deployable-scale ones, at least
    1 pp). The per-class numbers themselves are in summary.json and summary.md."""
    import numpy as np

    shown = [g for g in groups if any(r["variant"] == reference for r in g["records"])]
    heights = [max(2.0, 0.22 * len(g["records"]) + 1.2) for g in shown] or [2.0]
    fig = _figure((9, sum(heights)))
    if not shown:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, f"no {reference} to compare with", ha="center", va="center")
        ax.set_axis_off()
        fig.savefig(path, dpi=110)
        return
    axes = fig.subplots(len(shown), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, group in zip(axes, shown):
        ref = next(r for r in group["records"] if r["variant"] == reference)
        rows = [r for r in group["records"] if r["variant"] != reference]
        base = np.array([np.nan if v is None else v for v in ref["per_class_recall"]], float)
        change = np.array(
            [[np.nan if v is None else v for v in r["per_class_recall"]] for r in rows], float
        )
        change = 100.0 * (change - base)
        finite = np.abs(change[np.isfinite(change)])
        limit = max(1.0, float(np.percentile(finite, 95)) if finite.size else 1.0)
        image = ax.imshow(change, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_yticks(range(len(rows)), [r["variant"] for r in rows], fontsize=7)
        names = group.get("class_names") or [str(i) for i in range(change.shape[1])]
        ax.set_xticks(range(change.shape[1]), names, fontsize=7, rotation=45, ha="right")
        ax.set_title(
            f"{group['dataset']} / {group['model']}: per-class recall minus {reference}'s (pp)",
            fontsize=9,
        )
        fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
