"""What each evaluated variant quantizes, by its name, for the MicroNet score of every
variant (`variant_bits` -> `quantflow.micronet.uniform_score`). Plain Python.

    keras-float, tflite-fp32   everything at 32 bits (the reference: score 2.0)
    tflite-fp16                16-bit weights and biases (stored), float compute
    tflite-dynamic             8-bit weights; activations quantized to 8 bits on the fly
                               for the multiply-accumulates (float input), int32 biases
    tflite-int8[-cal*|-class*] 8-bit weights and activations (and input), int32 biases
    tflite-int16x8             8-bit weights, 16-bit activations, biases counted at 32
                               (TFLite stores int64: the score's widths stop at 32)
    tflite-int4-weights        4-bit weights, float compute
    tflite-dynamic-int4        4-bit weights, activations at 8 bits on the fly (XNNPACK's
                               dynamically quantized int8 x channelwise int4 kernels)
    bin-<b>, fixed-<b>         b-bit weights (and biases, unless weightquant keeps them
                               float), float activations: weight-only quantization
    fat-<scheme>[-sim]         the scheme's weight and activation bits, 8-bit input,
                               int32 biases
    adjq-<target>[-int8]       None: per-channel bits of their own (their score.json)
"""

from __future__ import annotations

import re

from quantflow.schemes import parse_scheme

FLOAT = {"weight_bits": 32, "activation_bits": 32, "bias_bits": 32, "input_bits": 32}


def variant_bits(variant: str, weightquant: dict | None = None) -> dict | None:
    """Uniform bit widths of `variant` ({weight_bits, activation_bits, bias_bits,
    input_bits}), or None for a variant with bits of its own or an unknown name."""
    if variant in ("keras-float", "tflite-fp32"):
        return dict(FLOAT)
    if variant == "tflite-int8" or re.fullmatch(r"tflite-int8-(cal[0-9]+(pct)?|class[0-9]+)",
                                                 variant):
        return {"weight_bits": 8, "activation_bits": 8, "bias_bits": 32, "input_bits": 8}
    uniform = {  # weight, activation, bias, input bits
        "tflite-fp16": (16, 32, 16, 32),
        "tflite-dynamic": (8, 8, 32, 32),
        "tflite-int16x8": (8, 16, 32, 32),
        "tflite-int4-weights": (4, 32, 32, 32),
        "tflite-dynamic-int4": (4, 8, 32, 32),
    }
    if variant in uniform:
        keys = ("weight_bits", "activation_bits", "bias_bits", "input_bits")
        return dict(zip(keys, uniform[variant]))
    weight_only = re.fullmatch(r"(bin|fixed)-([0-9]+)", variant)
    if weight_only:
        bits = int(weight_only.group(2))
        keep_bias = bool((weightquant or {}).get("keep_bias_float", False))
        return {"weight_bits": bits, "activation_bits": 32,
                "bias_bits": 32 if keep_bias else bits, "input_bits": 32}
    fat = re.fullmatch(r"fat-(w[0-9]+a[0-9]+-(?:sym|asym)-(?:pc|pt))(-sim)?", variant)
    if fat:
        scheme = parse_scheme(fat.group(1))
        return {"weight_bits": scheme["weight_bits"],
                "activation_bits": scheme["activation_bits"], "bias_bits": 32, "input_bits": 8}
    return None


SCORE_FIELDS = ("score", "parameter_score", "operation_score", "mean_weight_bits",
                "mean_activation_bits")


def add_scores(records: list[dict], counts: dict, weightquant: dict | None = None) -> list[dict]:
    """Give every record (a variant's metrics) its MicroNet score from its variant's
    uniform bits and its model's counts (`counts`: (dataset, model) -> the layer counts of
    micronet.json); records that carry a score (adjustable variants) keep theirs, and
    "score_source" says which: "uniform bits" or "per-channel bits"."""
    from quantflow.micronet import uniform_score

    for record in records:
        if "score" in record:
            record.setdefault("score_source", "per-channel bits")
            continue
        bits = variant_bits(record["variant"], weightquant)
        layers = counts.get((record["dataset"], record["model"]))
        if bits is None or layers is None:
            continue
        result = uniform_score(layers, bits["weight_bits"], bits["activation_bits"],
                               bias_bits=bits["bias_bits"], input_bits=bits["input_bits"])
        record.update({k: result[k] for k in SCORE_FIELDS}, score_source="uniform bits")
    return records


WEIGHT_ONLY = re.compile(r"(bin|fixed)-([0-9]+)")
SIMULATION = re.compile(r"fat-.+-sim|adjq-[a-z0-9]+")
LATENCY_FIELDS = ("ms_per_image_b1", "ms_per_image_batched", "latency_images",
                  "latency_batches", "latency_threads", "latency_cores_held")


def timed_variant(variant: str) -> str | None:
    """The variant whose timing a variant takes: its own; keras-float's for the weight-only
    variants (bin-<bits>, fixed-<bits>), which run its graph with other weight values; none
    for the fake-quant simulations (fat-<scheme>-sim, adjq-<target>), whose TensorFlow time
    says nothing of a deployed model's (their LiteRT exports are timed)."""
    if WEIGHT_ONLY.fullmatch(variant):
        return "keras-float"
    return None if SIMULATION.fullmatch(variant) else variant


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
            ms_per_image_batched=latency["ms_per_image_batched"],
            latency_images=latency["latency_images"],
            latency_batches=latency["latency_batches"],
            latency_threads=latency["threads"],
            latency_cores_held=latency["cores_held"],
        )
    return records
