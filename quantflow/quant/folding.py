"""Constants of the float graph as TFLite stores them: a layer's float kernel and bias,
BatchNormalization folded into the layer before it, and the per-channel MUL / ADD steps
(with their fixed output ranges) of Rescaling, Normalization and a BatchNormalization that
cannot be folded. NumPy on the float model's weights; no graph building."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from quantflow.errors import QuantflowError
from quantflow.quant.graph import Node
from quantflow.quant.lowering import TIE_MARGIN


def channel_vector(values, node: Node, what: str) -> np.ndarray:
    """A per-channel (last axis) constant as a vector (or a scalar), from a broadcastable
    array such as Normalization's mean of shape (1, 1, 1, C)."""
    values = np.asarray(keras.ops.convert_to_numpy(values), dtype=np.float64)
    if values.size > 1 and values.size != values.shape[-1]:
        raise QuantflowError(
            f"layer {node.path!r}: its {what} is not per channel of the last "
            f"axis (shape {values.shape}); only that is supported"
        )
    return values.reshape(-1) if values.size > 1 else values.reshape(())


def affine_steps(layer, node: Node) -> list[tuple[str, np.ndarray]]:
    """The MUL / ADD steps of Rescaling, Normalization or BatchNormalization (inference), in
    TensorFlow's order, without identity steps."""
    if isinstance(layer, layers.Rescaling):
        steps = [
            ("mul", channel_vector(layer.scale, node, "scale")),
            ("add", channel_vector(layer.offset, node, "offset")),
        ]
    elif isinstance(layer, layers.Normalization):
        if layer.invert:
            raise QuantflowError(
                f"layer {node.path!r}: Normalization(invert=True) is not supported"
            )
        mean = channel_vector(layer.mean, node, "mean")
        std = np.maximum(np.sqrt(channel_vector(layer.variance, node, "variance")), 1e-7)
        steps = [("add", -mean), ("mul", 1.0 / std)]
    else:
        axis = layer.axis[0] if isinstance(layer.axis, (list, tuple)) else layer.axis
        if axis not in (-1, node.ranks[0] - 1):
            raise QuantflowError(
                f"layer {node.path!r}: BatchNormalization over axis {axis}; "
                "only the last (channel) axis is supported"
            )
        mean = channel_vector(layer.moving_mean, node, "moving mean")
        gamma = (
            np.ones_like(mean)
            if layer.gamma is None
            else channel_vector(layer.gamma, node, "gamma")
        )
        beta = (
            np.zeros_like(mean) if layer.beta is None else channel_vector(layer.beta, node, "beta")
        )
        factor = gamma / np.sqrt(
            channel_vector(layer.moving_variance, node, "variance") + layer.epsilon
        )
        steps = [("mul", factor), ("add", beta - mean * factor)]
    identity = {"mul": 1.0, "add": 0.0}
    return [(mode, v) for mode, v in steps if not np.all(v == identity[mode])]


def affine_range(fixed: tuple, mode: str, c: np.ndarray, bits: int) -> tuple[float, float]:
    """The fixed output range of a MUL / ADD step by constant `c` on a fixed input range."""
    lo, hi = fixed
    ends = (
        np.concatenate([np.ravel(lo * c), np.ravel(hi * c)])
        if mode == "mul"
        else np.concatenate([np.ravel(lo + c), np.ravel(hi + c)])
    )
    out = (min(float(ends.min()), 0.0), max(float(ends.max()), 0.0))
    if mode == "add":
        steps = np.ravel(c) / ((hi - lo) / (2**bits - 1))
        if not np.allclose(steps, np.round(steps), rtol=0.0, atol=1e-3):
            out = (out[0] * TIE_MARGIN, out[1] * TIE_MARGIN)
    return out


def float_kernel(layer, node: Node) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) of a Conv2D / DepthwiseConv2D / Dense as float32 arrays, after checking
    the options the quantized layers implement."""
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise QuantflowError(f"layer {node.path!r}: only channels_last is supported")
    if isinstance(layer, layers.Conv2D) and layer.groups != 1:
        raise QuantflowError(f"layer {node.path!r}: grouped convolutions are not supported")
    if len(node.inputs) != 1:
        raise QuantflowError(f"layer {node.path!r}: takes one input tensor")
    kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel), dtype=np.float32)
    channels = kernel.shape[-1] * (kernel.shape[-2] if type(layer) is layers.DepthwiseConv2D else 1)
    bias = (
        np.asarray(keras.ops.convert_to_numpy(layer.bias), dtype=np.float32)
        if layer.use_bias
        else np.zeros(channels, np.float32)
    )
    return kernel, bias


def fold_batch_norm(layer, kernel, bias, bn) -> tuple[np.ndarray, np.ndarray]:
    """Fold inference-mode BatchNormalization into a kernel and bias (per output channel)."""

    def arr(v, default):
        return np.asarray(keras.ops.convert_to_numpy(v), np.float64) if v is not None else default

    channels = bias.shape[0]
    gamma = arr(bn.gamma, np.ones(channels))
    beta = arr(bn.beta, np.zeros(channels))
    mean, var = arr(bn.moving_mean, None), arr(bn.moving_variance, None)
    factor = gamma / np.sqrt(var + bn.epsilon)
    new_bias = (bias - mean) * factor + beta
    if type(layer) is layers.DepthwiseConv2D:  # output channel = input channel x multiplier
        factor = factor.reshape(kernel.shape[-2], kernel.shape[-1])
    return (kernel * factor).astype(np.float32), new_bias.astype(np.float32)
