"""What an adjustable model is shipped as: its packed weights (each channel at its own bits)
and the fake-quant model the TFLite converter turns into the deployable file (kernels INT4
or int8 by layer, int8 activations)."""

from __future__ import annotations

import numpy as np

from quantflow.errors import QuantflowError
from quantflow.quant.adjustable.settings import _activations, _ops


def packed_weights(model, meta: dict | None = None):
    """The deployable weights: every kernel's integer codes at its channels' own bit
    widths (`quantflow.formats.bitpack`), biases as float32 arrays."""
    from quantflow.formats import bitpack

    tensors, arrays = {}, {}
    ops = {layer.name: layer for layer in _ops(model)}
    for name, (kernel, step, bits) in quantized_kernels(model).items():
        depthwise = type(ops[name]).__name__ == "QDepthwiseConv2D"
        axis = bitpack.KERAS_CHANNEL_AXIS["depthwise" if depthwise else "conv"]
        # the output channels are the last axis (depthwise: the last two, C order)
        codes = np.rint(kernel.reshape(-1, step.size) / step).astype(np.int32)
        codes = codes.reshape(kernel.shape)
        tensors[f"{name}/kernel"] = {
            "codes": codes,
            "bits": bits,
            "scales": step,
            "channel_axis": axis,
        }
        arrays[f"{name}/bias"] = np.asarray(ops[name].bias.numpy(), np.float32)
    return bitpack.pack_file(tensors, arrays, meta or {})


def quantized_kernels(model) -> dict:
    """{layer name: (quantized kernel, per-channel step, per-channel bits)} of every
    adjustable weight quantizer."""
    import tensorflow as tf

    out = {}
    for layer in _ops(model):
        q = layer.quantizer
        kernel = tf.convert_to_tensor(layer.kernel)
        view = layer._channel_view(kernel)
        quantized = np.asarray(q(view), np.float32).reshape(tuple(kernel.shape))
        channels = int(view.shape[-1])
        step = np.broadcast_to(np.asarray(q.scale(), np.float32).reshape(-1), (channels,))
        bits = np.broadcast_to(q.channel_bits().reshape(-1), (channels,))
        out[layer.name] = (quantized, step.copy(), bits.copy())
    return out


def int8_model(float_model, model, images=None):
    """The deployable configuration as a FAT-style fake-quant model that converts to a
    TFLite model LiteRT runs exactly: a layer whose every channel is at most 4 bits
    (`quantflow.quant.adjustable.storage`) as INT4, each channel on its own trained grid
    (a 4-bit quantizer over [-7 S, 7 S]: a 3-bit channel's codes stay within +-3); any
    other layer as int8 on a grid that contains each channel's b-bit grid (step
    S / floor(127 / (2^(b-1) - 1)), so the int8 codes are the b-bit codes times that
    factor: at most 2^b - 1 distinct values); the same float biases; every activation
    8-bit per tensor over the largest trained range of its channels. Returns the model
    (its thresholds set; no calibration needed)."""
    from quantflow.quant.adjustable.storage import storage_class
    from quantflow.quant.lowering import INT4_BITS
    from quantflow.quant.transform import fake_quant_model

    qmodel = fake_quant_model(
        float_model, weight_bits=8, activation_bits=8, per_channel=True, symmetric=True
    )
    kernels = quantized_kernels(model)
    ops8 = {layer.name: layer for layer in _ops(qmodel)}
    if set(ops8) != set(kernels):
        raise QuantflowError("the int8 model's layers differ from the adjustable model's")
    adj_ops = {layer.name: layer for layer in _ops(model)}
    for name, (kernel, step, bits) in kernels.items():
        layer = ops8[name]
        layer.kernel.assign(kernel)
        layer.bias.assign(np.asarray(adj_ops[name].bias.numpy()))
        if storage_class(bits) == "int4":
            layer.quantizer.bits = INT4_BITS
            levels = 2.0 ** (INT4_BITS - 1) - 1
            t_max = np.maximum(levels * step.astype(np.float64), 1e-12).astype(np.float32)
        else:
            levels = 2.0 ** (bits.astype(np.float64) - 1) - 1
            factor = np.floor(127.0 / np.maximum(levels, 1.0))
            int8_step = step.astype(np.float64) / factor
            t_max = np.maximum(127.0 * int8_step, 1e-12).astype(np.float32)
        layer.quantizer.t_max.assign(t_max.reshape(layer.quantizer.t_max.shape))
        layer.quantizer.alpha.assign(np.ones_like(t_max).reshape(layer.quantizer.alpha.shape))
    adj_acts = {a.name: a for a in _activations(model)}
    for act in _activations(qmodel):
        src = adj_acts.get(act.name)
        if act.fixed_range is not None:
            continue
        if src is None or src.fixed_range is not None:
            raise QuantflowError(f"activation quantizer {act.name!r}: no adjustable twin")
        t = float(np.max(np.asarray(src.quantizer.threshold())))
        act.set_statistics(0.0, t)
    return qmodel
