"""The Keras layers of a fake-quant model, registered as "quantflow>ClassName" (the names
saved .keras files refer to; keep them): `ActivationQuant` (hosts an activation quantizer),
`QConv2D`, `QDepthwiseConv2D`, `QDense` (`QuantizedOp`: a constant kernel through a weight
quantizer, then TFLite's integer arithmetic), `QAffine` (constant MUL / ADD) and `QAdd`
(LiteRT's fixed-point ADD). Which quantizer a layer hosts is a registered name
(`quantflow.quant.quantizers`), "fat" by default, left out of the saved config then."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from quantflow.errors import QuantflowError
from quantflow.quant.ops import (
    exporting,
    f32_step,
    fixed_point_add,
    requantized,
    requantized_builtin,
    ste_round,
)

# the implementations register themselves on import: every quantizer a layer may name
import quantflow.quant.quantizers  # noqa: F401
from quantflow.quant.registry import quantizer_class
from quantflow.quant.lowering import ACTIVATIONS, FUSED_ACTIVATIONS, INT4_BITS

DEFAULT_QUANTIZER = "fat"


def _delegate(name: str):
    """A read-only property of the host layer reading its quantizer's attribute."""
    return property(lambda self: getattr(self.quantizer, name))


@keras.saving.register_keras_serializable(package="quantflow")
class ActivationQuant(layers.Layer):
    """Per-tensor fake quantization of an activation by its quantizer (FAT thresholds by
    default: see `quantflow.quant.quantizers.FatActivationQuantizer`). `signed=False` marks a
    tensor known to be non-negative; `fixed_range` (lo, hi) gives a constant range (no
    trainable parameters), e.g. the model input's pixel range."""

    bits = _delegate("bits")
    signed = _delegate("signed")
    symmetric = _delegate("symmetric")
    fixed_range = _delegate("fixed_range")
    t_max = _delegate("t_max")
    alpha = _delegate("alpha")
    r_min = _delegate("r_min")
    r_max = _delegate("r_max")
    alpha_t = _delegate("alpha_t")
    alpha_r = _delegate("alpha_r")

    def __init__(
        self,
        bits: int = 8,
        signed: bool = True,
        symmetric: bool = True,
        fixed_range=None,
        quantizer: str = DEFAULT_QUANTIZER,
        quantizer_options: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.quantizer_name = str(quantizer)
        self.quantizer_options = dict(quantizer_options or {})
        cls = quantizer_class("activation", self.quantizer_name)
        self.quantizer = cls(
            bits=bits,
            signed=signed,
            symmetric=symmetric,
            fixed_range=fixed_range,
            **self.quantizer_options,
        )
        self.enabled = True  # False: identity (float statistics for calibration)

    def build(self, input_shape):
        channels = input_shape[-1] if input_shape else None
        self.quantizer.build(self, None if channels is None else int(channels))

    def quant_range(self):
        """The range (lo, hi) the tensor is quantized to, as scalar tensors."""
        return self.quantizer.quant_range()

    def call(self, inputs):
        if not self.enabled:
            return inputs
        return self.quantizer(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def alpha_bounds(self) -> list[tuple]:
        """(variable, low, high) of each trainable threshold parameter."""
        return self.quantizer.alpha_bounds()

    def set_statistics(self, low: float, high: float) -> None:
        """Set the calibrated float range [low, high] of the tensor; alphas back to neutral."""
        self.quantizer.set_statistics(low, high)

    def describe(self) -> dict:
        """Calibrated statistics, alphas and effective range, as plain numbers."""
        return self.quantizer.describe()

    def get_config(self) -> dict:
        config = {
            **super().get_config(),
            "bits": self.bits,
            "signed": self.signed,
            "symmetric": self.symmetric,
            "fixed_range": None if self.fixed_range is None else list(self.fixed_range),
        }
        if self.quantizer_name != DEFAULT_QUANTIZER:
            config["quantizer"] = self.quantizer_name
        if self.quantizer_options:
            config["quantizer_options"] = dict(self.quantizer_options)
        return config


def _int8_exact(*hosts) -> bool:
    """Whether every host's quantizer has a TFLite int8 grid (see `Quantizer.int8_exact`)."""
    return all(getattr(host.quantizer, "int8_exact", True) for host in hosts)


class QuantizedOp(layers.Layer):
    """A layer whose float kernel (BatchNorm folded) and bias are constants and whose kernel
    goes through its weight quantizer (FAT: symmetric, narrow range, to [-T, T], T =
    clip(alpha) * max|W|, per output channel or per tensor); then the op, the bias and the
    fused activation.

    What TFLite runs, and so what the layer computes when its input's grid is known (at most
    8 bits, see `link_input`): the int32 bias round(b / (s_in s_w)) on the accumulator's grid
    (input scale x weight scale, per output channel), and the accumulator sum((x_q - z) w_q)
    + bias as exact integers (float32 holds them exactly below 2**24), scaled back by s_in
    s_w; the output quantizer then rounds it as LiteRT's XNNPACK kernels do (one float32
    multiply, one rounding). A float bias and a float convolution, as before, put about
    1 in 1000 outputs one step off TFLite's (the bias's rounding shifts every value of a
    channel by up to half an accumulator step, float sums put values near a tie on either
    side), and a network that amplifies small differences (a deep one, or one whose ReLU6
    outputs are a small part of their pre-activation range) turns those into top-1 flips.
    The gradients are the float layer's (straight-through roundings). In `export_mode`
    the layer traces as fake-quant kernel -> op -> the rounded bias, which the converter
    turns into the same int8 op and int32 bias."""

    folded_per_channel = False  # per-channel kernels by `grid_quant` instead of fake-quant ops

    bits = _delegate("bits")
    per_channel = _delegate("per_channel")
    t_max = _delegate("t_max")
    alpha = _delegate("alpha")

    def __init__(
        self,
        activation: str = "linear",
        bits: int = 8,
        per_channel: bool = True,
        input_scale: float | None = None,
        output_scale: float | None = None,
        weight_quantizer: str = DEFAULT_QUANTIZER,
        quantizer_options: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise QuantflowError(f"{type(self).__name__}: unsupported activation {activation!r}")
        self.activation = activation
        self.quantizer_name = str(weight_quantizer)
        self.quantizer_options = dict(quantizer_options or {})
        cls = quantizer_class("weight", self.quantizer_name)
        self.quantizer = cls(
            bits=bits,
            per_channel=per_channel,
            folded=self.folded_per_channel,
            **self.quantizer_options,
        )
        self.enabled = True  # False: the float kernel (float statistics for calibration)
        # the input's grid: a live link to its quantizer (set by the transform), else the
        # scale saved with the model (None: unknown, float bias and float arithmetic)
        self.input_scale = None if input_scale is None else float(input_scale)
        self.output_scale = None if output_scale is None else float(output_scale)
        self._input_range = self._output_range = None

    def link_input(self, quantizer: ActivationQuant | None) -> None:
        """Take the input's scale from `quantizer` (the ActivationQuant whose grid the input
        lies on), live, so trained thresholds move the bias grid with them. Only for at most
        8-bit activations and weights (what TFLite runs); otherwise float arithmetic."""
        if (
            quantizer is None
            or quantizer.bits > 8
            or self.bits > 8
            or not _int8_exact(quantizer, self)
        ):
            self._input_range, self.input_scale = None, None
        else:
            self._input_range = (quantizer.quant_range, 2**quantizer.bits - 1)

    def link_output(self, quantizer: ActivationQuant | None) -> None:
        """Requantize onto `quantizer`'s grid (the output's, after the fused activation) as
        LiteRT does; see the class doc. None, or more than 8 bits: left to the quantizer."""
        if (
            quantizer is None
            or quantizer.bits > 8
            or self._input_range is None
            or not _int8_exact(quantizer)
        ):
            self._output_range, self.output_scale = None, None
        else:
            self._output_range = (quantizer.quant_range, 2**quantizer.bits - 1)

    @staticmethod
    def _step(link, saved):
        if link is not None:
            quant_range, levels = link
            return f32_step(*quant_range(), levels)
        return None if saved is None else tf.constant(saved, tf.float32)

    def _input_step(self):
        """The input's quantization step as a scalar tensor, or None when unknown."""
        return self._step(self._input_range, self.input_scale)

    def _output_step(self):
        """The output quantizer's step as a scalar tensor, or None when unknown."""
        return self._step(self._output_range, self.output_scale)

    def weight_scale(self):
        """The scale of the int8 weights TFLite stores (per output channel or scalar)."""
        return self.quantizer.scale()

    def _kernel_shape(self, input_shape) -> tuple:
        raise NotImplementedError

    def _channel_view(self, kernel):
        """The kernel with the output channels as its last axis."""
        return kernel

    def _op(self, inputs, kernel):
        raise NotImplementedError

    def _channels(self, kernel_shape) -> int:
        """The number of output channels."""
        return int(kernel_shape[-1])

    def build(self, input_shape):
        shape = self._kernel_shape(input_shape)
        channels = self._channels(shape)
        self.kernel = self.add_weight(
            shape=shape, initializer="glorot_uniform", trainable=False, name="kernel"
        )
        self.bias = self.add_weight(
            shape=(channels,), initializer="zeros", trainable=False, name="bias"
        )
        self.quantizer.build(self, channels)

    def quantized_kernel(self):
        """The fake-quantized kernel (the float one while disabled)."""
        kernel = keras.ops.convert_to_tensor(self.kernel)
        if not self.enabled:
            return kernel
        return tf.reshape(self.quantizer(self._channel_view(kernel)), kernel.shape)

    def call(self, inputs):
        kernel = self.quantized_kernel()
        step = self._input_step() if self.enabled else None
        if step is None:
            outputs = self._op(inputs, kernel) + self.bias
        else:
            w_step = self.weight_scale()
            acc_step = step * w_step  # the int32 bias's scale, per output channel
            bias = ste_round(self.bias / acc_step)
            if exporting():
                outputs = self._op(inputs, kernel) + bias * acc_step
            else:
                view = ste_round(self._channel_view(kernel) / w_step)
                acc = self._op(ste_round(inputs / step), tf.reshape(view, kernel.shape))
                acc = acc + bias
                outputs = keras.activations.get(self.activation)(acc * acc_step)
                out_step = self._output_step()
                if out_step is None or self.activation not in FUSED_ACTIVATIONS:
                    return outputs
                if self.quantizer.bits <= INT4_BITS:  # an INT4 kernel: the built-in kernels
                    exact = requantized_builtin(acc, step, w_step, out_step, self.activation)
                else:  # XNNPACK
                    exact = requantized(acc, acc_step / out_step, self.activation, out_step)
                return outputs + tf.stop_gradient(exact - outputs)
        return keras.activations.get(self.activation)(outputs)

    def set_kernel(self, kernel: np.ndarray, bias: np.ndarray) -> None:
        """Set the float kernel and bias, and the weight thresholds from them."""
        self.kernel.assign(kernel)
        self.bias.assign(bias)
        self.reset_thresholds()

    def reset_thresholds(self) -> None:
        """The weight quantizer's statistics from the kernel (FAT: T_max = max|W| per
        channel or tensor, alpha = 1)."""
        self.quantizer.reset(self._channel_view(keras.ops.convert_to_tensor(self.kernel)))

    def alpha_bounds(self) -> list[tuple]:
        return self.quantizer.alpha_bounds()

    def describe(self) -> dict:
        return self.quantizer.describe()

    def get_config(self) -> dict:
        step = self._input_step() if self._input_range is not None else None
        config = {
            **super().get_config(),
            "activation": self.activation,
            "bits": self.bits,
            "per_channel": self.per_channel,
            "input_scale": self.input_scale if step is None else float(step),
            "output_scale": (
                float(self._output_step()) if self._output_range is not None else self.output_scale
            ),
        }
        if self.quantizer_name != DEFAULT_QUANTIZER:
            config["weight_quantizer"] = self.quantizer_name
        if self.quantizer_options:
            config["quantizer_options"] = dict(self.quantizer_options)
        return config


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if np.isscalar(value) else tuple(int(v) for v in value)


@keras.saving.register_keras_serializable(package="quantflow")
class QConv2D(QuantizedOp):
    """Conv2D (channels last, groups 1) with a fake-quantized kernel; see `QuantizedOp`."""

    def __init__(
        self,
        filters: int,
        kernel_size,
        strides=(1, 1),
        padding: str = "valid",
        dilation_rate=(1, 1),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters, self.padding = int(filters), padding
        self.kernel_size, self.strides = _pair(kernel_size), _pair(strides)
        self.dilation_rate = _pair(dilation_rate)

    def _kernel_shape(self, input_shape) -> tuple:
        return (*self.kernel_size, int(input_shape[-1]), self.filters)

    def _op(self, inputs, kernel):
        return keras.ops.conv(
            inputs,
            kernel,
            strides=self.strides,
            padding=self.padding,
            data_format="channels_last",
            dilation_rate=self.dilation_rate,
        )

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "dilation_rate": self.dilation_rate,
        }


@keras.saving.register_keras_serializable(package="quantflow")
class QDepthwiseConv2D(QuantizedOp):
    """DepthwiseConv2D (channels last) with a fake-quantized kernel, per output channel
    (input channel x depth multiplier, TFLite's layout); see `QuantizedOp`."""

    def __init__(
        self,
        kernel_size,
        strides=(1, 1),
        padding: str = "valid",
        depth_multiplier: int = 1,
        dilation_rate=(1, 1),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.kernel_size, self.strides = _pair(kernel_size), _pair(strides)
        self.padding, self.depth_multiplier = padding, int(depth_multiplier)
        self.dilation_rate = _pair(dilation_rate)

    def _kernel_shape(self, input_shape) -> tuple:
        return (*self.kernel_size, int(input_shape[-1]), self.depth_multiplier)

    def _channels(self, kernel_shape) -> int:
        return int(kernel_shape[-2] * kernel_shape[-1])

    def _channel_view(self, kernel):
        return tf.reshape(kernel, (*self.kernel_size, 1, -1))

    def _op(self, inputs, kernel):
        return keras.ops.depthwise_conv(
            inputs,
            kernel,
            strides=self.strides,
            padding=self.padding,
            data_format="channels_last",
            dilation_rate=self.dilation_rate,
        )

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "depth_multiplier": self.depth_multiplier,
            "dilation_rate": self.dilation_rate,
        }


@keras.saving.register_keras_serializable(package="quantflow")
class QDense(QuantizedOp):
    """Dense (on the last axis) with a fake-quantized kernel; see `QuantizedOp` and, per
    channel, `quantflow.quant.ops.grid_quant`."""

    folded_per_channel = True

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def _kernel_shape(self, input_shape) -> tuple:
        return (int(input_shape[-1]), self.units)

    def _op(self, inputs, kernel):
        return keras.ops.matmul(inputs, kernel)

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="quantflow")
class QAffine(layers.Layer):
    """x * c ("mul") or x + c ("add") with a constant c per channel (last axis) or scalar,
    fake-quantized per tensor to `bits` over [min(0, c), max(0, c)], as the TFLite converter
    stores the constant operand of an int8 MUL or ADD. Rescaling, Normalization and a
    BatchNormalization that cannot be folded become such steps."""

    def __init__(self, mode: str, values, bits: int = 8, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("mul", "add"):
            raise QuantflowError(f"QAffine mode must be 'mul' or 'add', got {mode!r}")
        self.mode, self.bits = mode, int(bits)
        self.values = np.asarray(values, dtype=np.float32).tolist()

    def constant(self):
        """The quantized constant."""
        c = tf.constant(self.values, dtype=tf.float32)
        lo, hi = min(0.0, float(np.min(self.values))), max(0.0, float(np.max(self.values)))
        if hi == lo:
            return c
        return tf.quantization.fake_quant_with_min_max_vars(c, lo, hi, num_bits=self.bits)

    def call(self, inputs):
        c = self.constant()
        return inputs * c if self.mode == "mul" else inputs + c

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode, "values": self.values, "bits": self.bits}


@keras.saving.register_keras_serializable(package="quantflow")
class QAdd(layers.Layer):
    """a + b of two int8 tensors, computed as LiteRT's XNNPACK ADD does when both input
    grids and the output grid are known (`link`; at most 8 bits): see
    `quantflow.quant.ops.fixed_point_add`. A float sum rounded by the output quantizer gives
    about 1 in 10,000 values one step off (values within 1e-5 of a tie). Gradients are the
    float sum's. Otherwise, and in `export_mode`, a plain Add (what the converter turns
    into ADD)."""

    def __init__(self, input_scales=None, output_scale=None, **kwargs):
        super().__init__(**kwargs)
        self.input_scales = None if input_scales is None else [float(v) for v in input_scales]
        self.output_scale = None if output_scale is None else float(output_scale)
        self._links = None  # ((quant_range, levels) of a, of b, of the output)

    def link(self, inputs, output) -> None:
        grids = [*inputs, output]
        if (
            any(q is None or q.bits > 8 for q in grids)
            or len(inputs) != 2
            or not _int8_exact(*grids)
        ):
            self._links, self.input_scales, self.output_scale = None, None, None
        else:
            self._links = [(q.quant_range, 2**q.bits - 1) for q in grids]

    def _steps(self):
        if self._links is not None:
            return [f32_step(*quant_range(), levels) for quant_range, levels in self._links]
        if self.input_scales is None or self.output_scale is None:
            return None
        return [tf.constant(v, tf.float32) for v in (*self.input_scales, self.output_scale)]

    def call(self, inputs):
        a, b = inputs
        total = a + b
        steps = self._steps()
        if steps is None or exporting():
            return total
        value = fixed_point_add(a, b, *steps)
        return total + tf.stop_gradient(value - total)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self) -> dict:
        steps = self._steps() if self._links is not None else None
        return {
            **super().get_config(),
            "input_scales": self.input_scales if steps is None else [float(v) for v in steps[:2]],
            "output_scale": self.output_scale if steps is None else float(steps[2]),
        }


@keras.saving.register_keras_serializable(package="quantflow")
class IslandFence(layers.Layer):
    """The edge of a float island (a layer with no int8 form, see
    `quantflow.quant.transform`): the identity, and in `export_mode` a float32 -> float64 ->
    float32 cast round trip (exact). TFLite's converter quantizes an op next to a
    fake-quant op even when told to leave it float (TANH, LOGISTIC on the island's input,
    the last op before its output quantizer); CAST has no int8 form, so the fence keeps
    the island's own ops float."""

    def call(self, inputs):
        if not exporting():
            return inputs
        return tf.cast(tf.cast(inputs, tf.float64), tf.float32)

    def compute_output_shape(self, input_shape):
        return input_shape
