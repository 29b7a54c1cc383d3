"""What each evaluated variant quantizes, by its name, for the MicroNet score of every
variant (`variant_bits` -> `quantflow.micronet.uniform_score`). Plain Python.

    keras-float, tflite-fp32   everything at 32 bits (the reference: score 2.0)
    tflite-int8                8-bit weights and activations (and input), int32 biases
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
    if variant == "tflite-int8":
        return {"weight_bits": 8, "activation_bits": 8, "bias_bits": 32, "input_bits": 8}
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
