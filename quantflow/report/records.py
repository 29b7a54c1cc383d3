"""The summary's records: one per evaluated variant (its metrics.json), with deltas against
the reference variant, MicroNet scores and timings joined in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from quantflow.variants import timed_variant, variant_bits

REFERENCE_VARIANT = "tflite-fp32"


def read_records(paths) -> list[dict]:
    """The metrics.json records of `paths`, in order."""
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
        for speed, ms in (
            ("speed_ratio_b1", "ms_per_image_b1"),
            ("speed_ratio_batched", "ms_per_image_batched"),
        ):
            timed = ref and ref.get(ms) and r.get(ms)  # simulations are not timed
            r[speed] = ref[ms] / r[ms] if timed else None
        out.append(r)
    return out


PAIRED_FIELDS = (
    "paired_test",
    "differ_images",
    "p_value",
    "significant",
    "agreement",
    "output_snr_db",
)


def add_paired(
    records: list[dict],
    predictions: dict,
    reference: str = REFERENCE_VARIANT,
    alpha: float = 0.05,
) -> list[dict]:
    """Judge every record's top-1 against the reference variant of its dataset and model
    by the exact paired test on the same test images (quantflow.evaluate.paired):
    "paired_test" (its name), "differ_images" (images whose credit differs), "p_value",
    "significant" (p < alpha: a win or a loss; otherwise a tie), and its fidelity,
    "agreement" (share of images with the reference's top-1 class) and "output_snr_db"
    (the reference's outputs over their difference; None when equal). `predictions`:
    (dataset, model, variant) -> {"credit", "top1", "scores"} per image. Without them:
    None."""
    from quantflow.evaluate.paired import output_snr_db, paired_test

    for record in records:
        key = (record["dataset"], record["model"])
        mine, ref = predictions.get((*key, record["variant"])), predictions.get((*key, reference))
        if mine is None or ref is None:
            record.update(dict.fromkeys(PAIRED_FIELDS))
            continue
        result = paired_test(mine["credit"], ref["credit"], alpha=alpha)
        record.update(
            paired_test=result["test"],
            differ_images=result["differ"],
            p_value=result["p"],
            significant=result["significant"],
            agreement=float(np.mean(mine["top1"] == ref["top1"])),
            output_snr_db=output_snr_db(mine.get("scores"), ref.get("scores")),
        )
    return records


SCORE_FIELDS = (
    "score",
    "parameter_score",
    "operation_score",
    "mean_weight_bits",
    "mean_activation_bits",
)


def add_scores(records: list[dict], counts: dict, weightquant: dict | None = None) -> list[dict]:
    """Give every record (a variant's metrics) its MicroNet score from its variant's
    uniform bits and its model's counts (`counts`: (dataset, model) -> the layer counts of
    micronet.json); records that carry a score (adjustable variants) keep theirs, and
    "score_source" says which: "uniform bits" or "per-channel bits"."""
    from quantflow.quant.micronet.score import uniform_score

    for record in records:
        if "score" in record:
            record.setdefault("score_source", "per-channel bits")
            continue
        bits = variant_bits(record["variant"], weightquant)
        layers = counts.get((record["dataset"], record["model"]))
        if bits is None or layers is None:
            continue
        result = uniform_score(
            layers,
            bits["weight_bits"],
            bits["activation_bits"],
            bias_bits=bits["bias_bits"],
            input_bits=bits["input_bits"],
        )
        record.update({k: result[k] for k in SCORE_FIELDS}, score_source="uniform bits")
    return records


LATENCY_FIELDS = (
    "ms_per_image_b1",
    "ms_per_image_b1_iqr",
    "ms_per_image_batched",
    "ms_per_image_batched_iqr",
    "load_before",
    "load_after",
    "measured_at",
    "other_work_cores",
    "latency_images",
    "latency_batches",
    "latency_threads",
    "latency_cores_held",
)


def add_latencies(records: list[dict], latencies: dict) -> list[dict]:
    """Give every record the timing its latency job measured (`latencies`: (dataset,
    model, variant) -> latency.json): "latency_variant" names whose timing it is, None (and
    None timings) for a simulation. A timed variant without its file raises KeyError."""
    for record in records:
        timed = timed_variant(record["variant"])
        record.update(dict.fromkeys(LATENCY_FIELDS), latency_variant=timed)
        if timed is None:
            continue
        latency = latencies[record["dataset"], record["model"], timed]
        record.update(
            ms_per_image_b1=latency["ms_per_image_b1"],
            ms_per_image_b1_iqr=latency.get("ms_per_image_b1_iqr"),
            ms_per_image_batched=latency["ms_per_image_batched"],
            ms_per_image_batched_iqr=latency.get("ms_per_image_batched_iqr"),
            load_before=latency.get("load_before"),
            load_after=latency.get("load_after"),
            measured_at=latency.get("measured_at"),
            other_work_cores=latency.get("other_work_cores"),
            latency_images=latency["latency_images"],
            latency_batches=latency["latency_batches"],
            latency_threads=latency["threads"],
            latency_cores_held=latency["cores_held"],
        )
    return records


OTHER_WORK_CORES = 0.2  # other processes' CPU use during a timing that counts as other work


def other_work(records: list[dict]) -> list[str]:
    """The timed variants whose timing job saw other work on the machine: other processes
    used more than OTHER_WORK_CORES cores' worth of CPU time while it timed."""
    return [
        r["variant"]
        for r in records
        if r.get("latency_variant") == r.get("variant")
        and (r.get("other_work_cores") or 0.0) > OTHER_WORK_CORES
    ]
