"""ai-edge-quantizer's recipes on a float .tflite file (int4 weights, dynamic int4)."""

from __future__ import annotations

from pathlib import Path

from quantflow.deploy.formats import AEQ_FORMATS
from quantflow.errors import QuantflowError


def quantize_with_aeq(fp32_model: str | Path, fmt: str) -> bytes:
    """An `AEQ_FORMATS` model: ai-edge-quantizer's recipe applied to an fp32 TFLite model
    (no calibration: both recipes quantize weights only ahead of time)."""
    if fmt not in AEQ_FORMATS:
        raise QuantflowError(
            f"unknown ai-edge-quantizer format {fmt!r}; one of {', '.join(AEQ_FORMATS)}"
        )
    from ai_edge_quantizer import quantizer, recipe

    recipe_fn = getattr(recipe, AEQ_FORMATS[fmt])
    result = quantizer.Quantizer(str(fp32_model), recipe_fn()).quantize(
        enable_progress_report=False
    )
    return bytes(result.quantized_model)
