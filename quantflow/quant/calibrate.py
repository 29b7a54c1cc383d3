"""Calibration and the thresholds report of a fake-quant model: the float statistics of
every calibrated activation quantizer's tensor (quantizers off), the weight quantizers'
statistics from their kernels, and accessors over the model's quantizers (their report,
trainable variables and bounds)."""

from __future__ import annotations

from contextlib import contextmanager

import keras
import numpy as np

from quantflow.errors import QuantflowError
from quantflow.quant.layers import ActivationQuant, QuantizedOp

CALIBRATION_METHODS = ("max", "percentile")


def _per_channel(q: ActivationQuant) -> bool:
    """Whether the activation quantizer takes statistics per channel (the adjustable one)."""
    return bool(getattr(q.quantizer, "per_channel", False))


def activation_quantizers(qmodel) -> list[ActivationQuant]:
    """The activation fake-quant layers of a fake-quant model, in layer order."""
    return [layer for layer in qmodel.layers if isinstance(layer, ActivationQuant)]


def weight_quantizers(qmodel) -> list[QuantizedOp]:
    """The layers of a fake-quant model that quantize weights, in layer order."""
    return [layer for layer in qmodel.layers if isinstance(layer, QuantizedOp)]


@contextmanager
def float_mode(qmodel):
    """Within the block, the fake-quant model computes in float (quantizers disabled)."""
    quantizers = activation_quantizers(qmodel) + weight_quantizers(qmodel)
    for q in quantizers:
        q.enabled = False
    try:
        yield qmodel
    finally:
        for q in quantizers:
            q.enabled = True


def image_batches(images, batches: int | None = None, batch_size: int = 32):
    """Float32 image batches from an array (split into `batch_size` chunks) or an iterable
    of batches (a tf.data.Dataset; (images, labels) pairs give their images), at most
    `batches` of them."""
    if isinstance(images, np.ndarray):
        source = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
    else:
        source = iter(images)
    for i, batch in enumerate(source):
        if batches is not None and i >= batches:
            return
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        yield np.asarray(batch, dtype=np.float32)


def calibrate(
    qmodel,
    images,
    batches: int | None = None,
    *,
    method: str = "max",
    percentile: float = 99.99,
    batch_size: int = 32,
) -> dict:
    """Initial thresholds: each calibrated activation quantizer gets the statistics of its
    tensor in the FLOAT model (quantizers off) over `batches` batches of `images`: "max"
    (max |x|, or min and max when asymmetric) or "percentile" (that percentile of |x|, or
    the lower and upper percentiles, averaged over batches), per channel for a per-channel
    activation quantizer (the adjustable one); weight thresholds max|W|.
    Every alpha is reset to its neutral value. Returns `thresholds(qmodel)`."""
    if method not in CALIBRATION_METHODS:
        raise QuantflowError(
            f"unknown calibration method {method!r}; choose one of "
            f"{', '.join(CALIBRATION_METHODS)}"
        )
    if method == "percentile" and not 50.0 < percentile <= 100.0:
        raise QuantflowError(f"percentile must be in (50, 100], got {percentile}")
    quantizers = [q for q in activation_quantizers(qmodel) if q.fixed_range is None]
    # a quantizer shared by two tensors (AveragePooling2D) is calibrated on its first one
    probe = keras.Model(qmodel.input, [q._inbound_nodes[0].input_tensors[0] for q in quantizers])
    lows, highs, count = [[] for _ in quantizers], [[] for _ in quantizers], 0
    with float_mode(qmodel):
        for batch in image_batches(images, batches, batch_size):
            outs = probe(batch, training=False) if quantizers else []
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            for q, out, lo, hi in zip(quantizers, outs, lows, highs):
                x = np.asarray(out, dtype=np.float32)
                if q.symmetric and _per_channel(q):  # statistics of each (last-axis) channel
                    x = np.abs(x) if q.signed else np.maximum(x, 0.0)
                    x = x.reshape(-1, x.shape[-1])
                    lo.append(np.zeros(x.shape[-1], np.float32))
                    hi.append(
                        x.max(axis=0) if method == "max" else np.percentile(x, percentile, axis=0)
                    )
                elif q.symmetric:
                    x = np.abs(x) if q.signed else np.maximum(x, 0.0)
                    lo.append(0.0)
                    hi.append(x.max() if method == "max" else np.percentile(x, percentile))
                elif method == "max":
                    lo.append(x.min()), hi.append(x.max())
                else:
                    lo.append(np.percentile(x, 100.0 - percentile))
                    hi.append(np.percentile(x, percentile))
            count += 1
    if count == 0:
        raise QuantflowError("calibration needs at least one batch of images")
    reduce_lo, reduce_hi = (np.min, np.max) if method == "max" else (np.mean, np.mean)
    for q, lo, hi in zip(quantizers, lows, highs):
        if _per_channel(q):
            q.set_statistics(reduce_lo(np.stack(lo), axis=0), reduce_hi(np.stack(hi), axis=0))
        else:
            q.set_statistics(float(reduce_lo(lo)), float(reduce_hi(hi)))
    for layer in weight_quantizers(qmodel):
        layer.reset_thresholds()
    return thresholds(qmodel)


def thresholds(qmodel) -> dict:
    """Per quantizer: its kind, bits, calibrated T_max (or r_min/r_max), alpha(s) and the
    effective range (activations: [lo, hi] before TF's zero-point nudging; weights: the
    threshold T per channel). Keys: the ActivationQuant layer names and "<layer>/kernel"."""
    info = {q.name: q.describe() for q in activation_quantizers(qmodel)}
    info.update({f"{w.name}/kernel": w.describe() for w in weight_quantizers(qmodel)})
    return info


def alpha_bounds(qmodel) -> list[tuple]:
    """(variable, low, high) of every trainable threshold parameter of the model."""
    return [
        b
        for q in activation_quantizers(qmodel) + weight_quantizers(qmodel)
        for b in q.alpha_bounds()
    ]


def alpha_variables(qmodel) -> list:
    """The trainable threshold parameters (the only trainable variables of the model)."""
    return [variable for variable, _, _ in alpha_bounds(qmodel)]


def clip_alphas(qmodel) -> None:
    """Clip every alpha variable into its bounds (what the forward pass uses anyway)."""
    for variable, low, high in alpha_bounds(qmodel):
        variable.assign(keras.ops.clip(variable, low, high))
