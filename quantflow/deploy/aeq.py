"""ai-edge-quantizer's recipes on a float .tflite file: int4 weights with float compute, dynamic
int4, and static int4 weights with int8 activations (calibrated)."""

from __future__ import annotations

from pathlib import Path

from quantflow.deploy.formats import AEQ_FORMATS, AEQ_STATIC
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


def quantize_static_with_aeq(fp32_model: str | Path, fmt: str, images) -> bytes:
    """An `AEQ_STATIC` model: ai-edge-quantizer's static recipe (int8 weights and
    activations) calibrated on `images` (float32 pixels, fed as one batch: its calibration
    keeps a moving average of min / max over samples, so one sample of all images gives the
    TF converter's ranges), then the weights of the ops `AEQ_STATIC[fmt]` names at its
    weight bits (the recipe is updated after calibrating: its calibrate() refuses the int4
    recipe)."""
    if fmt not in AEQ_STATIC:
        raise QuantflowError(
            f"unknown ai-edge-quantizer static format {fmt!r}; one of {', '.join(AEQ_STATIC)}"
        )
    import numpy as np
    from ai_edge_quantizer import qtyping, quantizer, recipe

    from quantflow.deploy.litert import interpreter

    weight_bits, ops = AEQ_STATIC[fmt]
    signatures = interpreter(Path(fp32_model)).get_signature_list()
    key = next(iter(signatures))
    (name,) = signatures[key]["inputs"]
    qt = quantizer.Quantizer(str(fp32_model), recipe.static_wi8_ai8())
    calibration = qt.calibrate({key: [{name: np.asarray(images, np.float32)}]}, num_threads=1)
    for op in ops:
        qt.add_static_config(".*", getattr(qtyping.TFLOperationName, op), 8, weight_bits)
    return bytes(qt.quantize(calibration).quantized_model)
