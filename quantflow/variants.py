"""What each evaluated variant quantizes, by its name, for the MicroNet score of every
variant (`variant_bits` -> `quantflow.quant.micronet.score.uniform_score`). Plain Python.

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

from quantflow.quant.schemes import parse_scheme

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


WEIGHT_ONLY = re.compile(r"(bin|fixed)-([0-9]+)")
SIMULATION = re.compile(r"fat-.+-sim|adjq-[a-z0-9]+")
def timed_variant(variant: str) -> str | None:
    """The variant whose timing a variant takes: its own; keras-float's for the weight-only
    variants (bin-<bits>, fixed-<bits>), which run its graph with other weight values; none
    for the fake-quant simulations (fat-<scheme>-sim, adjq-<target>), whose TensorFlow time
    says nothing of a deployed model's (their LiteRT exports are timed)."""
    if WEIGHT_ONLY.fullmatch(variant):
        return "keras-float"
    return None if SIMULATION.fullmatch(variant) else variant


