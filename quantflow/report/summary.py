"""The summary job, from files to files (the workflow's `summary` rule runs it): every
variant's metrics joined with timings and MicroNet scores into records (summary.json),
the verdict, the per-method sections and their figures, rendered to summary.md,
summary.html and the report's landing fragment.

Input paths follow the workflow's layout, results/<dataset>/<model>/... (the dataset, model
and variant, scheme or target are read from them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from quantflow.data.splits import read_info
from quantflow.evaluate.paired import load_predictions
from quantflow.report import render as htmlreport
from quantflow.report import verdict as comparison
from quantflow.report.methods import (
    adjustable_rows,
    fat_rows,
    plot_accuracy_vs_bits,
    plot_bits_per_layer,
    plot_fat_alphas,
    plot_fat_rmse,
    plot_recall_change,
    weightquant_rows,
)
from quantflow.report.ptq import diagnosis_rows, plot_calibration, plot_diagnosis, ptq_study
from quantflow.report.records import (
    LATENCY_FIELDS,
    REFERENCE_VARIANT,
    add_comparisons,
    add_latencies,
    add_paired,
    add_scores,
    read_records,
)
from quantflow.report.render import render


@dataclass
class SummaryInputs:
    """Lists of files (metrics.json, latency.json, train.json, weight-only errors.json, FAT's
    fat.json / history.csv / thresholds.pickle / tflite.json, diagnosis.json, micronet.json,
    adjustable.json / quant_info.json / tflite.json, info.json) and the two templates."""

    metrics: list
    latencies: list
    training: list
    errors: list
    fat: list
    fat_history: list
    fat_thresholds: list
    fat_checks: list
    diagnoses: list
    counts: list
    adjustable: list
    adjustable_bits: list
    adjustable_checks: list
    info: list
    template: str
    comparison_template: str
    predictions: list = field(default_factory=list)  # predictions.npz: the paired tests


@dataclass
class SummaryOutputs:
    """summary.json / .md / .html, the landing fragment and every figure."""

    json: str
    md: str
    html: str
    front: str
    size_plot: str
    weightquant_plot: str
    fat_rmse_plot: str
    fat_alphas_plot: str
    diagnosis_plot: str
    calibration_plot: str
    pareto_plot: str
    adjustable_weight_bits_plot: str
    adjustable_activation_bits_plot: str
    recall_plot: str


def summarise(
    inp: SummaryInputs,
    out: SummaryOutputs,
    config: dict,
    versions: dict | None = None,
    machine: dict | None = None,
    run: dict | None = None,
) -> list[dict]:
    """Read every input, write every output; returns the records (summary.json). `config`
    is the run's configuration (weightquant, diagnosis and verdict sections are read, and
    the whole is printed in the report); `versions`, `machine` and `run` (revision, date,
    config digest: quantflow.workflow.environment) describe the environment and the run
    for the report's footer."""
    micronet = {tuple(Path(p).parts[1:3]): json.loads(Path(p).read_text()) for p in inp.counts}
    counts = {key: record["layers"] for key, record in micronet.items()}
    # what the MicroNet count could not count as int8: float islands, or the whole model
    micronet_notes = [
        {**record, "dataset": key[0], "model": key[1]}
        for key, record in micronet.items()
        if record.get("float_layers") or record["layers"] is None
    ]
    latencies = {
        tuple(Path(p).parts[1:3]) + (Path(p).parent.name,): json.loads(Path(p).read_text())
        for p in inp.latencies
    }  # results/<dataset>/<model>/eval/<variant>/latency.json
    records = add_comparisons(add_latencies(read_records(inp.metrics), latencies))
    predictions = {  # results/<dataset>/<model>/eval/<variant>/predictions.npz
        tuple(Path(p).parts[1:3]) + (Path(p).parent.name,): load_predictions(p)
        for p in inp.predictions
    }
    alpha = config["verdict"].get("alpha", 0.05)
    add_paired(records, predictions, alpha=alpha)

    def credits_of(dataset, model):  # variant -> per-image credit, for the verdict's ties
        return {k[2]: v["credit"] for k, v in predictions.items() if k[:2] == (dataset, model)}

    add_scores(records, counts, config["weightquant"])
    Path(out.json).write_text(json.dumps(records, indent=2) + "\n")
    infos = {info["dataset"]: info for info in map(read_info, inp.info)}
    training = {}
    for path in inp.training:
        dataset, model = Path(path).parts[1:3]
        training[dataset, model] = json.loads(Path(path).read_text())
    groups = []
    for key in dict.fromkeys((r["dataset"], r["model"]) for r in records):
        rows = [r for r in records if (r["dataset"], r["model"]) == key]
        info = infos[key[0]]
        groups.append(
            {
                "dataset": key[0],
                "model": key[1],
                "records": rows,
                "num_samples": rows[0]["num_samples"],
                "num_classes": info["num_classes"],
                "class_names": info["class_names"],
                "batch_size": rows[0]["batch_size"],
                "training": training.get(key),
                "ptq": ptq_study(
                    rows, info, training.get(key), credits=credits_of(*key), alpha=alpha
                ),
            }
        )
    vcfg = config["verdict"]
    budget = vcfg["size_budget_kib"] * 1024 if vcfg["size_budget_kib"] else None
    for group in groups:
        group["verdict"] = comparison.verdict(
            group["records"],
            tolerance_pp=vcfg["tolerance_pp"],
            size_budget_bytes=budget,
            size_budget_ratio=vcfg["size_budget_ratio"],
            credits=credits_of(group["dataset"], group["model"]),
            alpha=alpha,
        )
        group["grouped"] = comparison.grouped_rows(group["records"])
        group["shared_timing"] = any(
            r["latency_variant"] not in (None, r["variant"]) for r in group["records"]
        )
    cross_model = comparison.cross_model_rows(
        {(g["dataset"], g["model"]): g["records"] for g in groups},
        tolerance_pp=vcfg["tolerance_pp"],
        size_budget_ratio=vcfg["size_budget_ratio"],
        size_budget_bytes=budget,
        credits={(g["dataset"], g["model"]): credits_of(g["dataset"], g["model"]) for g in groups},
        alpha=alpha,
    )
    comparison.plot_accuracy_vs(
        records, out.size_plot, x="size_bytes", tolerance_pp=vcfg["tolerance_pp"]
    )
    comparison.plot_accuracy_vs(
        records, out.pareto_plot, x="score", tolerance_pp=vcfg["tolerance_pp"]
    )
    plot_calibration([g["ptq"] for g in groups], out.calibration_plot)
    plot_recall_change(groups, REFERENCE_VARIANT, out.recall_plot)
    diagnoses = []
    for path in inp.diagnoses:  # results/<dataset>/<model>/eval/<variant>/diagnosis.json
        dataset, model = Path(path).parts[1:3]
        diagnoses.append({**json.loads(Path(path).read_text()), "dataset": dataset, "model": model})
    plot_diagnosis(diagnoses, out.diagnosis_plot)
    rows = diagnosis_rows(diagnoses, config["diagnosis"]["worst"])
    for group in groups:
        group["diagnosis"] = [
            r for r in rows if (r["dataset"], r["model"]) == (group["dataset"], group["model"])
        ]
    errors = []
    for path in inp.errors:
        dataset, model = Path(path).parts[1:3]
        errors.append({"dataset": dataset, "model": model, **json.loads(Path(path).read_text())})
    weightquant = weightquant_rows(records, errors)
    plot_accuracy_vs_bits(weightquant, records, out.weightquant_plot)
    fat = _fat(inp, records, out)
    adjustable = _adjustable(inp, records, out)
    timed = next((r for r in records if r["latency_variant"]), dict.fromkeys(LATENCY_FIELDS))
    shared = dict(
        groups=groups,
        reference=REFERENCE_VARIANT,
        cross_model=cross_model,
        tolerance_pp=vcfg["tolerance_pp"],
        runs_on=comparison.runs_on,
        paired=comparison.paired_cell,
        fidelity=comparison.fidelity_cell,
        alpha=vcfg.get("alpha", 0.05),
        size_plot=Path(out.size_plot).name,
        pareto_plot=Path(out.pareto_plot).name,
    )
    front = render(inp.comparison_template, compact_table=True, **shared)
    details = dict(
        weightquant=weightquant,
        weightquant_plot=Path(out.weightquant_plot).name,
        fat=fat,
        fat_rmse_plot=Path(out.fat_rmse_plot).name,
        fat_alphas_plot=Path(out.fat_alphas_plot).name,
        adjustable=adjustable,
        calibration_plot=Path(out.calibration_plot).name,
        diagnosis_plot=Path(out.diagnosis_plot).name,
        adjustable_weight_bits_plot=Path(out.adjustable_weight_bits_plot).name,
        adjustable_activation_bits_plot=Path(out.adjustable_activation_bits_plot).name,
        threads=timed["latency_threads"],
        latency_images=timed["latency_images"],
        latency_batches=timed["latency_batches"],
        cores_held=timed["latency_cores_held"],
        timing_load=_timing_load(records),
        config_yaml=yaml.safe_dump(dict(config), sort_keys=False),
        versions=versions or {},
        machine=machine or {},
        run=run,
        recall_plot=Path(out.recall_plot).name,
        micronet_notes=micronet_notes,
    )
    markdown = render(inp.template, compact_table=False, for_html=False, **shared, **details)
    Path(out.md).write_text(markdown)
    base = Path(out.md).parent  # the markdown's image links are relative to it
    # the page: every confusion matrix shown (a gallery) and the per-class recall as a
    # plot instead of its wide table
    page = render(inp.template, compact_table=False, for_html=True, **shared, **details)
    Path(out.html).write_text(htmlreport.html_page(page, base, "quantflow summary"))
    Path(out.front).write_text(htmlreport.html_fragment(front, base))
    return records


def _fat(inp, records, out):
    """FAT rows for the report, and its two figures."""
    import csv

    from quantflow.quant.fat.thresholds import alpha_values, load_thresholds

    def located(path):  # results/<dataset>/<model>/fat/<scheme>/<file>
        dataset, model, _, scheme = Path(path).parts[1:5]
        return {"dataset": dataset, "model": model, "scheme": scheme}

    summaries = [{**json.loads(Path(p).read_text()), **located(p)} for p in inp.fat]
    checks = [{**json.loads(Path(p).read_text()), **located(p)} for p in inp.fat_checks]
    rows = fat_rows(records, summaries, checks)
    histories, alphas = {}, {}
    for path in inp.fat_history:
        where = located(path)
        with open(path, newline="") as f:
            histories[f"{where['model']} {where['scheme']}"] = list(csv.DictReader(f))
    for path in inp.fat_thresholds:
        where = located(path)
        alphas[f"{where['model']} {where['scheme']}"] = alpha_values(
            load_thresholds(path)["trained"]
        )
    plot_fat_rmse(histories, out.fat_rmse_plot)
    plot_fat_alphas(alphas, out.fat_alphas_plot)
    return rows


def _adjustable(inp, records, out):
    """Adjustable targets' rows for the report, and the two bit-distribution figures."""

    def located(path):  # results/<dataset>/<model>/adjustable/<target>/<file>
        dataset, model, _, target = Path(path).parts[1:5]
        return {"dataset": dataset, "model": model, "target": target}

    summaries = [{**json.loads(Path(p).read_text()), **located(p)} for p in inp.adjustable]
    checks = [{**json.loads(Path(p).read_text()), **located(p)} for p in inp.adjustable_checks]
    bits = {}
    for path in inp.adjustable_bits:
        where = located(path)
        bits[f"{where['model']} {where['target']}"] = json.loads(Path(path).read_text())
    plot_bits_per_layer(bits, "weights", out.adjustable_weight_bits_plot)
    plot_bits_per_layer(bits, "activations", out.adjustable_activation_bits_plot)
    return adjustable_rows(records, summaries, checks)


def _timing_load(records: list[dict]) -> dict:
    """What the timing jobs saw of the machine: the variants timed beside other work
    (`records.other_work`), and the range of the 1-minute load average before them."""
    from quantflow.report.records import other_work

    loads = [
        r["load_before"]["load_1min"]
        for r in records
        if r.get("latency_variant") == r["variant"]
        and (r.get("load_before") or {}).get("load_1min") is not None
    ]
    from datetime import datetime

    times = sorted(
        datetime.fromisoformat(r["measured_at"])
        for r in records
        if r.get("latency_variant") == r["variant"] and r.get("measured_at")
    )
    span = (times[-1] - times[0]).total_seconds() / 60 if times else 0.0
    return {
        "busy": other_work(records),
        "seen": bool(loads),
        "low": min(loads) if loads else None,
        "high": max(loads) if loads else None,
        # timings taken more than SEPARATE_RUNS_MINUTES apart: not one run's
        "separate_runs": span > SEPARATE_RUNS_MINUTES,
        "first": times[0].strftime("%Y-%m-%d %H:%M UTC") if times else None,
        "last": times[-1].strftime("%Y-%m-%d %H:%M UTC") if times else None,
    }


SEPARATE_RUNS_MINUTES = 30  # one run times every model within minutes
