"""The TFLite formats a variant can name (tflite-<format>): the converter's fp32, fp16,
dynamic, int8 (with its calibration studies) and int16x8, and ai-edge-quantizer's int4 ones."""

from __future__ import annotations

import re

from quantflow.errors import QuantflowError

FORMATS = ("fp32", "fp16", "dynamic", "int8", "int16x8")


IO_TYPES = ("int8", "uint8")  # input / output types of full-integer models


# a format name: a base format, for int8 with the calibration set in a suffix:
# int8-cal<N> (N seeded training images), int8-cal<P>pct (P percent of the training set),
# int8-class<k> (calibration_images training images of class k only)
FORMAT_PATTERN = re.compile(
    r"(fp32|fp16|dynamic|int16x8|int8)(?:-cal([0-9]+)(pct)?|-class([0-9]+))?"
)


def parse_format(name: str) -> dict:
    """A TFLite format name as {"base", "calibration": None | {"count": N} |
    {"percent": P} | {"class": k}} (see FORMAT_PATTERN); a calibration suffix only on int8."""
    match = FORMAT_PATTERN.fullmatch(name)
    if not match or (match.group(1) != "int8" and match.group(0) != match.group(1)):
        raise QuantflowError(
            f"unknown TFLite format {name!r}: one of {', '.join(FORMATS)}, or int8-cal<N>, "
            "int8-cal<P>pct, int8-class<k>"
        )
    base, number, pct, klass = match.groups()
    calibration = None
    if number is not None:
        calibration = {"percent": int(number)} if pct else {"count": int(number)}
        if calibration.get("count") == 0 or not 0 < calibration.get("percent", 1) <= 100:
            raise QuantflowError(
                f"TFLite format {name!r}: calibrate on 1 or more images, "
                "or 1 to 100 percent of the training set"
            )
    elif klass is not None:
        calibration = {"class": int(klass)}
    return {"base": base, "calibration": calibration}


# Formats ai-edge-quantizer makes from the fp32 TFLite model (the converter has no int4):
# format -> its recipe (ai_edge_quantizer.recipe)
AEQ_FORMATS = {
    "int4-weights": "weight_only_wi4_afp32",  # int4 weights per channel, float compute
    "dynamic-int4": "dynamic_wi4_afp32",  # int4 weights, activations quantized on the fly
}


# ai-edge-quantizer's static recipe with int8 activations, calibrated: format -> (weight
# bits, the ops at those bits; every other op int8). Its policy lists static_wi4_ai8 for
# CONV_2D and FULLY_CONNECTED only (DEPTHWISE_CONV_2D stays int8).
AEQ_STATIC = {"static-int4": (4, ("CONV_2D", "FULLY_CONNECTED"))}


def needs_calibration(name: str) -> bool:
    """Full-integer formats take a representative dataset."""
    return parse_format(name)["base"] in ("int8", "int16x8")
