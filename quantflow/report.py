"""The summary: every variant's metrics.json in one list, compared to the fp32 TFLite
model of the same dataset and model, rendered to markdown by a jinja2 template."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

REFERENCE_VARIANT = "tflite-fp32"


def read_records(paths) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in paths]


def add_comparisons(records: list[dict], reference: str = REFERENCE_VARIANT) -> list[dict]:
    """Add, to each record, its change against the reference variant of the same dataset
    and model: accuracy in percentage points, size ratio, speed ratios (reference time /
    variant time, so above 1 means faster). Missing reference -> None."""
    refs = {(r["dataset"], r["model"]): r for r in records if r["variant"] == reference}
    out = []
    for r in records:
        ref = refs.get((r["dataset"], r["model"]))
        r = dict(r)
        r["reference"] = reference if ref else None
        r["delta_accuracy_pp"] = 100.0 * (r["accuracy"] - ref["accuracy"]) if ref else None
        r["size_ratio"] = r["size_bytes"] / ref["size_bytes"] if ref else None
        r["speed_ratio_b1"] = ref["ms_per_image_b1"] / r["ms_per_image_b1"] if ref else None
        r["speed_ratio_batched"] = (ref["ms_per_image_batched"] / r["ms_per_image_batched"]
                                    if ref else None)
        out.append(r)
    return out


def machine_description() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def render(template_path: str | Path, **context) -> str:
    import jinja2

    template_path = Path(template_path)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_path.parent)),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["pct"] = lambda v, d=2: "n/a" if v is None else f"{100.0 * v:.{d}f}"
    env.filters["signed"] = lambda v, d=2: "n/a" if v is None else f"{v:+.{d}f}"
    env.filters["num"] = lambda v, d=2: "n/a" if v is None else f"{v:.{d}f}"
    env.filters["sci"] = lambda v: "n/a" if v is None else f"{v:.3g}"
    env.filters["kib"] = lambda v: f"{v / 1024:.1f}"
    return env.get_template(template_path.name).render(**context)


def weightquant_rows(records: list[dict], errors: list[dict]) -> list[dict]:
    """One row per weight-only quantized variant: its accuracy record joined with the
    error summary of its checkpoint, sorted by dataset, model, algorithm, bits."""
    by_variant = {(r["dataset"], r["model"], r["variant"]): r for r in records}
    rows = []
    for e in errors:
        record = by_variant.get((e["dataset"], e["model"], f"{e['algorithm']}-{e['bits']}"))
        if record:
            rows.append({**record, "algorithm": e["algorithm"], "bits": e["bits"],
                         "error_min": e["min"], "error_mean": e["mean"], "error_max": e["max"]})
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
        ax.plot([r["bits"] for r in line], [100 * r["accuracy"] for r in line], marker="o",
                label=f"{key[1]} {key[2]}")
    for r in records:
        if r["variant"] == REFERENCE_VARIANT:
            ax.axhline(100 * r["accuracy"], linestyle="--", color="grey",
                       label=f"{r['model']} {REFERENCE_VARIANT}")
    if not rows:
        ax.text(0.5, 0.5, "no weight-only quantization configured", ha="center",
                transform=ax.transAxes)
    ax.set_xlabel("bits per weight")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Weight-only quantization: accuracy against bit width")
    ax.grid(alpha=0.3)
    if rows:
        ax.set_xticks(sorted({r["bits"] for r in rows}))
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
