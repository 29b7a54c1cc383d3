"""Fake quantization of a Keras 3 functional model "in the TFLite manner", with trainable
FAT thresholds (Goncharenko et al., "Fast Adjustable Threshold For Uniform Neural Network
Quantization", arXiv 1812.07872).

`fake_quant_model` rebuilds a float classifier as the graph TFLite's int8 kernels execute,
every rounding explicit (`tf.quantization.fake_quant_*` ops). Converted with
`quantflow.tflite.convert(qmodel, "int8", calibration)` it becomes a fully int8 TFLite model
that uses these ranges, so the Keras model predicts what the device will: the quantized
layers compute TFLite's integer arithmetic exactly (int32 bias on the accumulator's grid,
integer accumulators, XNNPACK's float32 requantization and fixed-point ADD; see
`_QuantizedOp` and `QAdd`), so the logits match LiteRT's to the output step on the zoo
models, not only the top-1 class. `export_mode` (used by `quantflow.tflite.convert`) traces
the graph the converter expects instead.

* Conv2D, DepthwiseConv2D and Dense become `QConv2D`, `QDepthwiseConv2D`, `QDense`: a
  BatchNormalization right after one (its only consumer, the layer being linear) is folded
  into the kernel and a float bias (TFLite stores it as int32), and a following ReLU /
  ReLU6 (only consumer) is fused, as TFLite fuses them. The kernel is quantized symmetric,
  narrow range, per output channel (or per tensor) to [-T, T] (below 8 bits handed to the
  converter as int8 on a grid that contains the b-bit one, see `int8_grid`). Other
  activations are separate int8 ops in TFLite, so they get a quantizer before and after.
* `ActivationQuant` quantizes one tensor: the model input, the output of every quantized
  layer (after its fused activation), of Add, Subtract, Multiply, Average, Concatenate,
  Maximum, Minimum, average pooling, standalone activations and the logits.
  - Add, Subtract and Multiply followed by their only consumer ReLU / ReLU6 are quantized
    after the activation (fused in TFLite).
  - Sigmoid and softmax outputs have TFLite's fixed range [0, 255/256] (tanh [-1, 127/128]);
    swish is LOGISTIC then MUL, with the sigmoid quantized in between, as TFLite runs it.
  - Max pooling, Reshape, Flatten, ZeroPadding2D and Cropping2D keep their input's grid (no
    quantizer); AveragePooling2D rounds back onto its input's grid (same quantizer).
  - A tensor that only feeds a Concatenate / Maximum / Minimum gets no quantizer of its
    own: TFLite puts it on that op's output grid, so it is rounded once, by that op's.
  - Rescaling, Normalization and a BatchNormalization that cannot be folded become per-
    channel MUL / ADD steps (`QAffine`, constants quantized as TFLite stores them), each
    with its own quantizer.
  Dropout and noise layers are dropped; a functional model nested in another (transfer
  learning wrapper) is flattened first. Any other layer raises a QuantflowError naming it.
* The model INPUT is quantized to a fixed range, (0, 255) by default: 8-bit scale 1 and
  zero point -128, so integer pixels are exact in the TFLite model's int8 input. The
  preprocessing steps after it get fixed ranges too, the image of the input range:
  Rescaling(1/255) stays exact; an offset that is not a whole number of input steps (as
  Rescaling(1/127.5, -1)) cannot be exact with zero on the grid, and its range is widened
  by TIE_MARGIN so no value sits on a rounding tie. `input_range=None` calibrates the
  input quantizer like any other (signed).

Thresholds (FAT): symmetric, T = clip(alpha, 0.5, 1) * T_max, range [-T, T * 127/128] for
signed (8 bits: scale T/128, int8 zero point exactly 0; [-T, T] would put the zero point on
a tie that TensorFlow and the converter round differently) and [0, T] for non-negative tensors (after ReLU, ReLU6, sigmoid, softmax, and ops of those).
Asymmetric activations (`symmetric=False`): the calibrated range [m, M] with R = M - m
becomes lo = m + clip(alpha_T) * R (alpha_T in [-0.2, 0.4], [0, 0.4] if non-negative) and
hi = lo + clip(alpha_R, 0.5, 1) * R, then widened to contain 0 (TFLite must represent zero
exactly, so for a non-negative tensor lo stays 0). Weights are always symmetric (TFLite int8
weights have zero point 0). The alphas start at their neutral values and are the only
trainable variables of the model; T_max (m, M) comes from `calibrate` (activations, float
statistics) and max|W| (weights). Fixed ranges have no alphas.

The quantizers get the FAT gradient (straight-through for the rounding): for a value
inside the range d y / d hi = (y - x) / (hi - lo) = -d y / d lo, outside it the gradient
goes to the nearer edge, so training shrinks a range that is too wide, not only widens one
(TensorFlow's own fake-quant gradient only ever widens).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from quantflow.errors import QuantflowError

ALPHA_BOUNDS = (0.5, 1.0)  # threshold scale (symmetric) and width scale (asymmetric)
SHIFT_BOUNDS = {True: (-0.2, 0.4), False: (0.0, 0.4)}  # asymmetric left edge, by signedness
MIN_THRESHOLD = 1e-6  # floor of T_max: an all-zero tensor or channel still has a valid range
FUSED_ACTIVATIONS = ("linear", "relu", "relu6")  # what TFLite fuses into CONV/FC/ADD/MUL
ACTIVATIONS = FUSED_ACTIVATIONS + ("sigmoid", "hard_sigmoid", "silu", "hard_silu", "tanh")
ACTIVATIONS += ("softmax",)
NON_NEGATIVE_ACTIVATIONS = ("relu", "relu6", "sigmoid", "hard_sigmoid", "softmax")
CALIBRATION_METHODS = ("max", "percentile")
TIE_MARGIN = 1.01  # widening of a fixed range whose grid would put values on rounding ties


def fixed_output_range(activation: str, bits: int) -> tuple[float, float] | None:
    """The output range TFLite imposes on an activation (8 bits: LOGISTIC and SOFTMAX scale
    1/256 zero point -128, TANH scale 1/128 zero point 0), or None."""
    if activation in ("sigmoid", "softmax"):
        return 0.0, 1.0 - 2.0**-bits
    if activation == "tanh":
        return -1.0, 1.0 - 2.0 ** (1 - bits)
    return None


# --------------------------------------------------------------------------- fake quant op


def _fat_gradient(x, y, lo, hi, dy, per_channel: bool):
    """Gradients (x, lo, hi) of a quantizer y(x; lo, hi): straight-through inside the
    range, the rounding error's share (y - x) / (hi - lo) for the edges, and for a value
    outside the range its whole gradient for the nearer edge."""
    inside = tf.logical_and(x >= lo, x <= hi)
    error = (y - x) / tf.maximum(hi - lo, MIN_THRESHOLD)
    zeros, ones = tf.zeros_like(x), tf.ones_like(x)
    d_hi = dy * tf.where(inside, error, tf.where(x > hi, ones, zeros))
    d_lo = dy * tf.where(inside, -error, tf.where(x < lo, ones, zeros))
    axes = list(range(len(x.shape) - 1)) if per_channel else None
    return (
        tf.where(inside, dy, zeros),
        tf.reduce_sum(d_lo, axis=axes),
        tf.reduce_sum(d_hi, axis=axes),
    )


_EXPORT = [False]  # set by `export_mode`: layers trace the graph the converter expects


@contextmanager
def export_mode():
    """Within the block, fake-quant models trace as the TFLite converter wants them (for
    `quantflow.tflite.convert`): plain fake-quant ops without the FAT custom gradients (the
    conversion takes about half the time) and each quantized layer as fake-quant kernel ->
    op -> bias, the bias already on TFLite's int32 grid, instead of the exact integer
    arithmetic the layers simulate otherwise (see `_QuantizedOp`). Same outputs."""
    previous = _EXPORT[0]
    _EXPORT[0] = True
    try:
        yield
    finally:
        _EXPORT[0] = previous


def _ste_round(x):
    """round(x) with a straight-through gradient (plain round while exporting)."""
    if _EXPORT[0]:
        return tf.round(x)
    return x + tf.stop_gradient(tf.round(x) - x)


def fake_quant(x, lo, hi, *, bits: int, narrow_range: bool = False, per_channel: bool = False):
    """`tf.quantization.fake_quant_with_min_max_vars[_per_channel]` (what the TFLite converter
    turns into int8 quantization) with the FAT gradient for `lo` and `hi` (see module doc).
    Per channel, `lo` and `hi` are vectors over the last axis of `x`."""
    if _EXPORT[0]:
        op = (
            tf.quantization.fake_quant_with_min_max_vars_per_channel
            if per_channel
            else tf.quantization.fake_quant_with_min_max_vars
        )
        return op(x, lo, hi, num_bits=bits, narrow_range=narrow_range)

    @tf.custom_gradient
    def _fake_quant(x, lo, hi):
        if per_channel:
            y = tf.quantization.fake_quant_with_min_max_vars_per_channel(
                x, lo, hi, num_bits=bits, narrow_range=narrow_range
            )
        else:
            y = tf.quantization.fake_quant_with_min_max_vars(
                x, lo, hi, num_bits=bits, narrow_range=narrow_range
            )
        return y, lambda dy: _fat_gradient(x, y, lo, hi, dy, per_channel)

    return _fake_quant(x, lo, hi)


def grid_quant(w, t, *, bits: int, per_channel: bool = True):
    """Symmetric narrow-range quantization of a constant `w` to [-t, t] (per last-axis
    channel, or per tensor with a scalar `t`) written with plain ops (round(clip(w) / s) * s,
    s = t / (2**(bits-1) - 1)), so the TFLite converter folds it into a float constant whose
    per-channel max is exactly t: at 8 bits its own per-channel int8 weight quantization
    then recovers the same integers (below 8 bits it stores round(q * 127 / levels)
    with scale t / 127, within half an 8-bit step of the b-bit values q: `folded_int8`).
    Used for Dense, where the converter rejects per-channel fake-quant ops (it transposes
    the kernel for FULLY_CONNECTED). Same values and FAT gradient as `fake_quant`."""

    if _EXPORT[0]:
        step = t / float(2 ** (bits - 1) - 1)
        return tf.floor(tf.clip_by_value(w, -t, t) / step + 0.5) * step

    @tf.custom_gradient
    def _grid_quant(w, t):
        step = t / float(2 ** (bits - 1) - 1)
        y = tf.floor(tf.clip_by_value(w, -t, t) / step + 0.5) * step

        def grad(dy):
            dw, d_lo, d_hi = _fat_gradient(w, y, -t, t, dy, per_channel)
            return dw, d_hi - d_lo

        return y, grad

    return _grid_quant(w, t)


def int8_grid(w, t, *, bits: int, per_channel: bool):
    """A CONV_2D / DEPTHWISE_CONV_2D kernel `w` already on the `bits`-bit grid of [-t, t]
    (bits < 8), unchanged (straight-through gradient, none for t), handed to the converter
    as 8-bit fake quant over [-t', t'], t' = 127 s / k, s = t / levels, k = 127 // levels
    (4 bits: k = 18). Its step s / k divides s, so the converter stores k times the b-bit
    integers as int8 (still 2**bits - 1 distinct values): exactly the same weights.

    Why not the b-bit fake-quant op itself: at 4 bits the converter then stores the kernel
    as int4 with scale s = t / 7. LiteRT's default XNNPACK delegate does not take int4
    filters, so those ops run on the built-in kernels, whose requantization rounds twice
    (gemmlowp: acc * multiplier rounded to an integer, then a rounding shift by -shift,
    where s_in * s / s_out = m * 2**shift, m in [0.5, 1)): an error of up to 2**(shift-1)
    output steps, biased upward, that the fake-quant model's single rounding does not have.
    With 4-bit scales that is 1/16 to 1/8 of a step, and 1-8% of every layer's outputs came
    out one step higher (tiny_mobilenet w4a8: top-1 agreement 99.5%, logits up to 3 steps
    apart). As 8-bit ops they run in XNNPACK with one rounding, and the accumulator grid
    (and the int32 bias's, s_in * s / k) is k times finer: 99.9%, at most 1 step apart.
    """
    levels = 2 ** (bits - 1) - 1
    t8 = tf.stop_gradient(t * (127.0 / (levels * (127 // levels))))
    return fake_quant(w, -t8, t8, bits=8, narrow_range=True, per_channel=per_channel)


def folded_int8(w, t):
    """A Dense kernel `w` on the b-bit grid of [-t, t] per channel (b < 8) as the converter
    stores it: it quantizes the folded constant itself, per channel with scale
    max|w| / 127 = t / 127, which cannot hold the b-bit values q * t / levels exactly
    (127 / 7 is not a whole number), so FULLY_CONNECTED holds round(q * 127 / levels) * t /
    127. Modelled here (never a tie: 127 q / levels is never a half) with a straight-through
    gradient, so the fake-quant model computes what LiteRT does (still 2**b - 1 values)."""
    step = t / 127.0
    return w + tf.stop_gradient(tf.round(w / step) * step - w)


def _clip(variable, bounds: tuple[float, float]):
    return keras.ops.clip(variable, bounds[0], bounds[1])


# --------------------------------------------------------------------------- layers


@keras.saving.register_keras_serializable(package="quantflow")
class ActivationQuant(layers.Layer):
    """Per-tensor fake quantization of an activation with FAT thresholds. `signed=False`
    marks a tensor known to be non-negative; `fixed_range` (lo, hi) gives a constant range
    (no trainable parameters), e.g. the model input's pixel range."""

    def __init__(
        self, bits: int = 8, signed: bool = True, symmetric: bool = True, fixed_range=None, **kwargs
    ):
        super().__init__(**kwargs)
        self.bits, self.signed, self.symmetric = int(bits), bool(signed), bool(symmetric)
        self.fixed_range = None if fixed_range is None else tuple(float(v) for v in fixed_range)
        self.enabled = True  # False: identity (float statistics for calibration)

    def build(self, input_shape):
        if self.fixed_range is not None:
            pass
        elif self.symmetric:
            self.t_max = self.add_weight(
                shape=(), initializer="ones", trainable=False, name="t_max"
            )
            self.alpha = self.add_weight(shape=(), initializer="ones", name="alpha")
        else:
            self.r_min = self.add_weight(
                shape=(),
                initializer="zeros" if not self.signed else keras.initializers.Constant(-1.0),
                trainable=False,
                name="r_min",
            )
            self.r_max = self.add_weight(
                shape=(), initializer="ones", trainable=False, name="r_max"
            )
            self.alpha_t = self.add_weight(shape=(), initializer="zeros", name="alpha_t")
            self.alpha_r = self.add_weight(shape=(), initializer="ones", name="alpha_r")

    def quant_range(self):
        """The range (lo, hi) the tensor is quantized to, as scalar tensors."""
        if self.fixed_range is not None:
            return tf.constant(self.fixed_range[0]), tf.constant(self.fixed_range[1])
        if self.symmetric:
            t = _clip(self.alpha, ALPHA_BOUNDS) * self.t_max
            if not self.signed:
                return tf.zeros_like(t), t
            # [-T, T] would put the zero point on a tie (127.5 steps), which TensorFlow's
            # nudging and the converter round either way: int8 zero point 0 or -1
            return -t, t * (1.0 - 2.0 ** (1 - self.bits))
        width = self.r_max - self.r_min
        lo = self.r_min + _clip(self.alpha_t, SHIFT_BOUNDS[self.signed]) * width
        hi = lo + _clip(self.alpha_r, ALPHA_BOUNDS) * width
        return tf.minimum(lo, 0.0), tf.maximum(hi, 0.0)

    def call(self, inputs):
        if not self.enabled:
            return inputs
        lo, hi = self.quant_range()
        return fake_quant(inputs, lo, hi, bits=self.bits)

    def compute_output_shape(self, input_shape):
        return input_shape

    def alpha_bounds(self) -> list[tuple]:
        """(variable, low, high) of each trainable threshold parameter."""
        if self.fixed_range is not None:
            return []
        if self.symmetric:
            return [(self.alpha, *ALPHA_BOUNDS)]
        return [(self.alpha_t, *SHIFT_BOUNDS[self.signed]), (self.alpha_r, *ALPHA_BOUNDS)]

    def set_statistics(self, low: float, high: float) -> None:
        """Set the calibrated float range [low, high] of the tensor; alphas back to neutral."""
        if self.fixed_range is not None:
            return
        if self.symmetric:
            t = max(abs(high), 0.0 if not self.signed else abs(low))
            self.t_max.assign(max(t, MIN_THRESHOLD))
            self.alpha.assign(1.0)
        else:
            low = max(low, 0.0) if not self.signed else min(low, 0.0)
            high = max(high, low + MIN_THRESHOLD)
            self.r_min.assign(low)
            self.r_max.assign(high)
            self.alpha_t.assign(0.0)
            self.alpha_r.assign(1.0)

    def describe(self) -> dict:
        """Calibrated statistics, alphas and effective range, as plain numbers."""
        lo, hi = (float(v) for v in self.quant_range())
        info = {
            "kind": "activation",
            "bits": self.bits,
            "signed": self.signed,
            "fixed": self.fixed_range is not None,
            "range": [lo, hi],
        }
        if self.fixed_range is None and self.symmetric:
            info.update(t_max=float(self.t_max.numpy()), alpha=float(self.alpha.numpy()))
        elif self.fixed_range is None:
            info.update(
                r_min=float(self.r_min.numpy()),
                r_max=float(self.r_max.numpy()),
                alpha_t=float(self.alpha_t.numpy()),
                alpha_r=float(self.alpha_r.numpy()),
            )
        return info

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "bits": self.bits,
            "signed": self.signed,
            "symmetric": self.symmetric,
            "fixed_range": None if self.fixed_range is None else list(self.fixed_range),
        }


class _QuantizedOp(layers.Layer):
    """A layer whose float kernel (BatchNorm folded) and bias are constants and whose kernel
    is fake-quantized symmetric, narrow range, to [-T, T], T = clip(alpha) * max|W|, per
    output channel or per tensor; then the op, the bias and the fused activation.

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

    def __init__(
        self,
        activation: str = "linear",
        bits: int = 8,
        per_channel: bool = True,
        input_scale: float | None = None,
        output_scale: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise QuantflowError(f"{type(self).__name__}: unsupported activation {activation!r}")
        self.activation, self.bits, self.per_channel = activation, int(bits), bool(per_channel)
        self.enabled = True  # False: the float kernel (float statistics for calibration)
        # the input's grid: a live link to its quantizer (set by the transform), else the
        # scale saved with the model (None: unknown, float bias and float arithmetic)
        self.input_scale = None if input_scale is None else float(input_scale)
        self.output_scale = None if output_scale is None else float(output_scale)
        self._input_range = self._output_range = None

    def link_input(self, quantizer: "ActivationQuant | None") -> None:
        """Take the input's scale from `quantizer` (the ActivationQuant whose grid the input
        lies on), live, so trained thresholds move the bias grid with them. Only for at most
        8-bit activations and weights (what TFLite runs); otherwise float arithmetic."""
        if quantizer is None or quantizer.bits > 8 or self.bits > 8:
            self._input_range, self.input_scale = None, None
        else:
            self._input_range = (quantizer.quant_range, 2**quantizer.bits - 1)

    def link_output(self, quantizer: "ActivationQuant | None") -> None:
        """Requantize onto `quantizer`'s grid (the output's, after the fused activation) as
        LiteRT does; see the class doc. None, or more than 8 bits: left to the quantizer."""
        if quantizer is None or quantizer.bits > 8 or self._input_range is None:
            self._output_range, self.output_scale = None, None
        else:
            self._output_range = (quantizer.quant_range, 2**quantizer.bits - 1)

    @staticmethod
    def _step(link, saved):
        if link is not None:
            quant_range, levels = link
            return _f32_step(*quant_range(), levels)
        return None if saved is None else tf.constant(saved, tf.float32)

    def _input_step(self):
        """The input's quantization step as a scalar tensor, or None when unknown."""
        return self._step(self._input_range, self.input_scale)

    def _output_step(self):
        """The output quantizer's step as a scalar tensor, or None when unknown."""
        return self._step(self._output_range, self.output_scale)

    def weight_scale(self):
        """The scale of the int8 weights TFLite stores (per output channel or scalar)."""
        t = _clip(self.alpha, ALPHA_BOUNDS) * self.t_max
        if self.bits < 8 and not (self.per_channel and self.folded_per_channel):
            levels = 2 ** (self.bits - 1) - 1  # `int8_grid`: k times finer than the b-bit grid
            return _f32_step(-t, t, 2 * levels * (127 // levels))
        return _f32_step(-t, t, 2 ** min(self.bits, 8) - 2)

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
        thresholds = (channels,) if self.per_channel else ()
        self.t_max = self.add_weight(
            shape=thresholds, initializer="ones", trainable=False, name="kernel_t_max"
        )
        self.alpha = self.add_weight(shape=thresholds, initializer="ones", name="kernel_alpha")

    def quantized_kernel(self):
        """The fake-quantized kernel (the float one while disabled)."""
        kernel = keras.ops.convert_to_tensor(self.kernel)
        if not self.enabled:
            return kernel
        t = _clip(self.alpha, ALPHA_BOUNDS) * self.t_max
        view = self._channel_view(kernel)
        if self.per_channel and self.folded_per_channel:
            view = grid_quant(view, t, bits=self.bits)
            if self.bits < 8:  # what FULLY_CONNECTED will hold: see `folded_int8`
                view = folded_int8(view, t)
        elif self.bits < 8:  # the b-bit grid by plain ops, handed over as int8: `int8_grid`
            view = grid_quant(view, t, bits=self.bits, per_channel=self.per_channel)
            view = int8_grid(view, t, bits=self.bits, per_channel=self.per_channel)
        else:
            view = fake_quant(
                view, -t, t, bits=self.bits, narrow_range=True, per_channel=self.per_channel
            )
        return tf.reshape(view, kernel.shape)

    def call(self, inputs):
        kernel = self.quantized_kernel()
        step = self._input_step() if self.enabled else None
        if step is None:
            outputs = self._op(inputs, kernel) + self.bias
        else:
            w_step = self.weight_scale()
            acc_step = step * w_step  # the int32 bias's scale, per output channel
            bias = _ste_round(self.bias / acc_step)
            if _EXPORT[0]:
                outputs = self._op(inputs, kernel) + bias * acc_step
            else:
                view = _ste_round(self._channel_view(kernel) / w_step)
                acc = self._op(_ste_round(inputs / step), tf.reshape(view, kernel.shape))
                acc = acc + bias
                outputs = keras.activations.get(self.activation)(acc * acc_step)
                out_step = self._output_step()
                if out_step is None or self.activation not in FUSED_ACTIVATIONS:
                    return outputs
                return outputs + tf.stop_gradient(
                    _requantized(acc, acc_step / out_step, self.activation, out_step) - outputs
                )
        return keras.activations.get(self.activation)(outputs)

    def set_kernel(self, kernel: np.ndarray, bias: np.ndarray) -> None:
        """Set the float kernel and bias, and the weight thresholds from them."""
        self.kernel.assign(kernel)
        self.bias.assign(bias)
        self.reset_thresholds()

    def reset_thresholds(self) -> None:
        """T_max = max|W| (per channel or tensor), alpha = 1."""
        view = np.abs(np.asarray(self._channel_view(keras.ops.convert_to_tensor(self.kernel))))
        t_max = view.reshape(-1, view.shape[-1]).max(axis=0)
        t_max = np.maximum(t_max if self.per_channel else t_max.max(), MIN_THRESHOLD)
        self.t_max.assign(t_max.astype(np.float32))
        self.alpha.assign(np.ones_like(t_max, dtype=np.float32))

    def alpha_bounds(self) -> list[tuple]:
        return [(self.alpha, *ALPHA_BOUNDS)]

    def describe(self) -> dict:
        t_max, alpha = np.asarray(self.t_max.numpy()), np.asarray(self.alpha.numpy())
        t = np.clip(alpha, *ALPHA_BOUNDS) * t_max
        return {
            "kind": "weight",
            "bits": self.bits,
            "per_channel": self.per_channel,
            "t_max": t_max.tolist(),
            "alpha": alpha.tolist(),
            "threshold": t.tolist(),
        }

    def get_config(self) -> dict:
        step = self._input_step() if self._input_range is not None else None
        return {
            **super().get_config(),
            "activation": self.activation,
            "bits": self.bits,
            "per_channel": self.per_channel,
            "input_scale": self.input_scale if step is None else float(step),
            "output_scale": (
                float(self._output_step())
                if self._output_range is not None
                else self.output_scale
            ),
        }


def _f32_step(lo, hi, levels: int):
    """(hi - lo) / levels as the TFLite converter computes a scale from a fake-quant range:
    in double precision, stored as float32 (float32 arithmetic is sometimes one ulp off,
    enough to move a product that sits on a rounding tie to its other side)."""
    wide = tf.cast(hi, tf.float64) - tf.cast(lo, tf.float64)
    return tf.cast(wide / float(levels), tf.float32)


def _requantized(acc, multiplier, activation: str, out_step):
    """The int32 accumulator `acc` (a float32 tensor of whole numbers) requantized as
    LiteRT's XNNPACK kernels do it: float32(acc) * float32(multiplier) (multiplier = s_in
    s_w / s_out per channel), clamped to the fused activation's range (ReLU6: round(6 /
    s_out) steps), rounded half to even; returned in real units, a hair inside its rounding
    interval (the residual kept below 0.49 steps), so the output quantizer lands on the same
    integer whatever its float arithmetic and still sees its rounding error."""
    v = tf.stop_gradient(acc) * tf.stop_gradient(multiplier)
    out_step = tf.stop_gradient(out_step)
    if activation in ("relu", "relu6"):
        v = tf.maximum(v, 0.0)
    if activation == "relu6":
        v = tf.minimum(v, tf.round(6.0 / out_step))
    r = tf.round(v)
    return (r + tf.clip_by_value(v - r, -0.49, 0.49)) * out_step


@keras.saving.register_keras_serializable(package="quantflow")
class QConv2D(_QuantizedOp):
    """Conv2D (channels last, groups 1) with a fake-quantized kernel; see `_QuantizedOp`."""

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
class QDepthwiseConv2D(_QuantizedOp):
    """DepthwiseConv2D (channels last) with a fake-quantized kernel, per output channel
    (input channel x depth multiplier, TFLite's layout); see `_QuantizedOp`."""

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
class QDense(_QuantizedOp):
    """Dense (on the last axis) with a fake-quantized kernel; see `_QuantizedOp` and, per
    channel, `grid_quant`."""

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
    grids and the output grid are known (`link`; at most 8 bits): each input's scale over
    the output's as a 20-bit fixed-point multiplier (m = rint(float32(s_x / s_out) * 2**shift),
    shift = 20 - exponent of the larger ratio), acc = (q_a m_a + q_b m_b + 2**(shift-1)) >>
    shift. A float sum rounded by the output quantizer gives about 1 in 10,000 values one
    step off (values within 1e-5 of a tie). Returned in real units a hair inside the rounding
    interval (as `_requantized`); gradients are the float sum's. Otherwise, and in
    `export_mode`, a plain Add (what the converter turns into ADD)."""

    def __init__(self, input_scales=None, output_scale=None, **kwargs):
        super().__init__(**kwargs)
        self.input_scales = None if input_scales is None else [float(v) for v in input_scales]
        self.output_scale = None if output_scale is None else float(output_scale)
        self._links = None  # ((quant_range, levels) of a, of b, of the output)

    def link(self, inputs, output) -> None:
        grids = [*inputs, output]
        if any(q is None or q.bits > 8 for q in grids) or len(inputs) != 2:
            self._links, self.input_scales, self.output_scale = None, None, None
        else:
            self._links = [(q.quant_range, 2**q.bits - 1) for q in grids]

    def _steps(self):
        if self._links is not None:
            return [_f32_step(*quant_range(), levels) for quant_range, levels in self._links]
        if self.input_scales is None or self.output_scale is None:
            return None
        return [tf.constant(v, tf.float32) for v in (*self.input_scales, self.output_scale)]

    def call(self, inputs):
        a, b = inputs
        total = a + b
        steps = self._steps()
        if steps is None or _EXPORT[0]:
            return total
        sa, sb, so = (tf.stop_gradient(v) for v in steps)
        ratios = [tf.cast(sa / so, tf.float64), tf.cast(sb / so, tf.float64)]
        exponent = tf.floor(tf.math.log(tf.maximum(*ratios)) / np.log(2.0))
        scale = tf.pow(tf.constant(2.0, tf.float64), 20.0 - exponent)
        ma, mb = (tf.round(r * scale) for r in ratios)  # rint: half to even, as lrintf
        qa = tf.round(tf.cast(tf.stop_gradient(a) / sa, tf.float64))
        qb = tf.round(tf.cast(tf.stop_gradient(b) / sb, tf.float64))
        exact = (qa * ma + qb * mb) / scale
        r = tf.floor(exact + 0.5)
        value = tf.cast(r + tf.clip_by_value(exact - r, -0.49, 0.49), tf.float32) * so
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


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if np.isscalar(value) else tuple(int(v) for v in value)


# --------------------------------------------------------------------------- graph


@dataclass(frozen=True)
class _Ref:
    """A tensor of the flattened graph, standing in for a KerasTensor in call arguments."""

    key: int


@dataclass
class _Node:
    """One layer call of the flattened graph."""

    layer: object
    path: str  # the layer's name after the nested models it sits in: "backbone/conv"
    args: tuple
    kwargs: dict
    inputs: list[int]
    outputs: list[int]
    ranks: list[int]  # of the outputs


@dataclass
class _Graph:
    nodes: list[_Node] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    next_key: int = 0

    def new_key(self) -> int:
        self.next_key += 1
        return self.next_key

    def consumers(self) -> dict[int, list[int]]:
        """Tensor key -> indices of the nodes that read it (once per node)."""
        users: dict[int, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for key in dict.fromkeys(node.inputs):
                users.setdefault(key, []).append(i)
        return users


def _graph_nodes(model, path: str) -> list:
    """The Keras nodes of a functional model between its inputs and outputs, in
    topological order (iterative depth-first search from the outputs)."""
    input_ids = {id(t) for t in model.inputs}
    order, seen = [], set()
    stack = [(t, False) for t in reversed(model.outputs)]
    while stack:
        tensor, expanded = stack.pop()
        if id(tensor) in input_ids:
            continue
        history = getattr(tensor, "_keras_history", None)
        if history is None or history.operation is None:
            raise QuantflowError(
                f"model {path or model.name!r}: a tensor of its graph has no layer history; "
                "only functional (or Sequential) models can be fake-quantized"
            )
        node = history.operation._inbound_nodes[history.node_index]
        if expanded:
            if id(node) not in seen:
                seen.add(id(node))
                order.append(node)
            continue
        if id(node) in seen:
            continue
        if isinstance(history.operation, layers.InputLayer):
            raise QuantflowError(
                f"model {path or model.name!r}: input {tensor.name!r} is not one of the "
                "model's inputs"
            )
        stack.append((tensor, True))
        stack.extend((t, False) for t in reversed(node.arguments.keras_tensors))
    return order


def _model_graph(model) -> tuple[list, list]:
    """(inputs, outputs) KerasTensors of a functional or Sequential model."""
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise QuantflowError(
            f"model {model.name!r} ({type(model).__name__}) has no functional graph; "
            "only functional or built Sequential models can be fake-quantized"
        )
    return inputs, outputs


def _expand(graph: _Graph, model, input_keys: list[int], path: str) -> list[int]:
    """Append the layer calls of `model` (nested models expanded) fed by `input_keys`;
    returns the keys of its outputs."""
    inputs, outputs = _model_graph(model)
    if len(inputs) != len(input_keys):
        raise QuantflowError(f"model {path!r} takes {len(inputs)} inputs, got {len(input_keys)}")
    scope = {id(t): k for t, k in zip(inputs, input_keys)}
    for node in _graph_nodes(model, path):
        op = node.operation
        in_keys = [scope[id(t)] for t in node.arguments.keras_tensors]
        where = f"{path}/{op.name}" if path else op.name
        if isinstance(op, keras.Model):
            out_keys = _expand(graph, op, in_keys, where)
        else:
            out_keys = [graph.new_key() for _ in node.outputs]
            args, kwargs = keras.tree.map_structure(
                lambda v: _Ref(scope[id(v)]) if isinstance(v, keras.KerasTensor) else v,
                (node.arguments.args, node.arguments.kwargs),
            )
            ranks = [len(t.shape) for t in node.outputs]
            graph.nodes.append(
                _Node(op, where, tuple(args), dict(kwargs), in_keys, out_keys, ranks)
            )
        for t, k in zip(node.outputs, out_keys):
            scope[id(t)] = k
    return [scope[id(t)] for t in outputs]


def flatten_graph(model) -> _Graph:
    """The layer calls of a functional model with nested models expanded in place."""
    graph = _Graph()
    inputs, _ = _model_graph(model)
    graph.inputs = [graph.new_key() for _ in inputs]
    graph.outputs = _expand(graph, model, graph.inputs, "")
    return graph


# --------------------------------------------------------------------------- transform

_DROPPED = (
    layers.Dropout,
    layers.SpatialDropout1D,
    layers.SpatialDropout2D,
    layers.GaussianNoise,
    layers.GaussianDropout,
    layers.AlphaDropout,
    layers.ActivityRegularization,
)
# ops TFLite runs on their input's int8 grid (same scale and zero point in and out)
_SAME_GRID = (
    layers.Reshape,
    layers.Flatten,
    layers.ZeroPadding2D,
    layers.Cropping2D,
    layers.MaxPooling2D,
    layers.GlobalMaxPooling2D,
    layers.Identity,
)
_MERGES = (
    layers.Add,
    layers.Subtract,
    layers.Multiply,
    layers.Average,
    layers.Maximum,
    layers.Minimum,
    layers.Concatenate,
)
# merges whose inputs TFLite puts on the output's grid (the converter overrides their ranges)
_SHARED_SCALE_MERGES = (layers.Concatenate, layers.Maximum, layers.Minimum)
_FUSING_MERGES = (layers.Add, layers.Subtract, layers.Multiply)  # TFLite fuses ReLU(6) there
_POOLS = (layers.GlobalAveragePooling2D, layers.AveragePooling2D)
_AFFINE = (layers.Rescaling, layers.Normalization, layers.BatchNormalization)
_ACTIVATION_LAYERS = (layers.ReLU, layers.Activation, layers.LeakyReLU, layers.Softmax)
_WEIGHTED = (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)
SUPPORTED_LAYERS = tuple(
    cls.__name__
    for cls in _WEIGHTED + _MERGES + _POOLS + _AFFINE + _ACTIVATION_LAYERS + _SAME_GRID + _DROPPED
)


def _activation_name(layer) -> str | None:
    """The activation a ReLU / Activation layer (or a layer's `activation`) computes, as
    one of ACTIVATIONS, or None when it is none of them."""
    if isinstance(layer, layers.ReLU):
        if float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
            return None
        if layer.max_value is None:
            return "relu"
        return "relu6" if float(layer.max_value) == 6.0 else None
    fn = getattr(layer, "activation", None)
    name = getattr(fn, "__name__", None)
    return name if name in ACTIVATIONS else None


@dataclass
class _Tensor:
    """A tensor of the fake-quant graph: its KerasTensor, whether it is known non-negative,
    the constant range of its quantizer (None: calibrated) and the ActivationQuant whose grid
    it lies on (None: not quantized yet, e.g. an ADD output before its fused ReLU)."""

    value: object
    non_negative: bool
    fixed: tuple | None = None
    grid: ActivationQuant | None = None


class _Transform:
    """Builds the fake-quant graph from a flattened float graph (see fake_quant_model)."""

    def __init__(
        self,
        graph: _Graph,
        weight_bits: int,
        activation_bits: int,
        per_channel: bool,
        symmetric: bool,
    ):
        self.graph, self.users = graph, graph.consumers()
        self.weight_bits, self.activation_bits = weight_bits, activation_bits
        self.per_channel, self.symmetric = per_channel, symmetric
        self.tensors: dict[int, _Tensor] = {}
        self.skip: set[int] = set()  # nodes folded or fused into an earlier one
        self.link_after: dict[int, tuple] = {}  # tensor key -> (QAdd, input grids) to link
        self.names: set[str] = set()

    # ---- helpers
    def name(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def sole_user(self, key: int) -> int | None:
        """The index of the only node reading tensor `key` (None if it is a model output or
        read by several nodes)."""
        users = self.users.get(key, [])
        if len(users) != 1 or key in self.graph.outputs:
            return None
        return users[0]

    def feeds_shared_scale(self, key: int) -> bool:
        """Whether tensor `key` only reaches a Concatenate / Maximum / Minimum (possibly
        through same-grid ops): TFLite quantizes it with that op's output range."""
        user = self.sole_user(key)
        while user is not None and type(self.graph.nodes[user].layer) in _SAME_GRID:
            user = self.sole_user(self.graph.nodes[user].outputs[0])
        return user is not None and type(self.graph.nodes[user].layer) in _SHARED_SCALE_MERGES

    def quantizer(self, name: str, non_negative: bool, fixed=None) -> ActivationQuant:
        return ActivationQuant(
            bits=self.activation_bits,
            signed=not non_negative,
            symmetric=self.symmetric,
            fixed_range=fixed,
            name=self.name(f"{name}_quant"),
        )

    def quantized(self, x, name: str, non_negative: bool, fixed=None) -> _Tensor:
        """`x` through a new quantizer."""
        quantizer = self.quantizer(name, non_negative, fixed)
        return _Tensor(quantizer(x), non_negative, fixed, quantizer)

    def finish(self, key: int, x, name: str, non_negative: bool, fixed=None) -> None:
        """Set tensor `key` to `x` quantized by its own quantizer, unless TFLite gives it the
        range of the Concatenate (...) it feeds, whose quantizer then rounds it once."""
        if fixed is None and self.feeds_shared_scale(key):
            self.tensors[key] = _Tensor(x, non_negative)
        else:
            self.tensors[key] = self.quantized(x, name, non_negative, fixed)
        if key in self.link_after:  # a QAdd whose fused ReLU this quantizer follows
            add, inputs = self.link_after.pop(key)
            add.link(inputs, self.tensors[key].grid)

    def fill(self, value):
        return keras.tree.map_structure(
            lambda v: self.tensors[v.key].value if isinstance(v, _Ref) else v, value
        )

    def clone_call(self, node: _Node):
        layer = node.layer
        config = layer.get_config()
        config["name"] = self.name(layer.name)
        clone = type(layer).from_config(config)
        kwargs = {k: v for k, v in self.fill(node.kwargs).items() if k != "training"}
        out = clone(*self.fill(node.args), **kwargs)
        if layer.weights:
            clone.set_weights(layer.get_weights())
        return out

    def unsupported(self, node: _Node, reason: str = "") -> QuantflowError:
        return QuantflowError(
            f"layer {node.path!r} ({type(node.layer).__name__}) cannot be fake-quantized"
            f"{': ' + reason if reason else ''}; supported layers: {', '.join(SUPPORTED_LAYERS)}"
            " (a nested functional model is flattened). Replace it or leave the model float."
        )

    # ---- main
    def run(self, model, input_range) -> keras.Model:
        inputs = []
        for key, tensor in zip(self.graph.inputs, model.inputs):
            x = keras.Input(shape=tensor.shape[1:], dtype=tensor.dtype, name=self.name(tensor.name))
            inputs.append(x)
            nonneg = input_range is not None and input_range[0] >= 0
            self.tensors[key] = self.quantized(x, x.name, nonneg, input_range)
        for i, node in enumerate(self.graph.nodes):
            if i not in self.skip:
                self.visit(node)
        outputs = []
        for key in self.graph.outputs:
            t = self.tensors[key]
            outputs.append(
                t.value
                if t.grid is not None
                else self.quantized(t.value, f"output_{len(outputs)}", t.non_negative).value
            )
        return keras.Model(
            inputs if len(inputs) > 1 else inputs[0],
            outputs if len(outputs) > 1 else outputs[0],
            name=f"{model.name}_fakequant",
        )

    def visit(self, node: _Node) -> None:
        layer, kind = node.layer, type(node.layer)
        if kind in _WEIGHTED:
            return self.weighted(node)
        if len(node.outputs) != 1:
            raise self.unsupported(node, "it has several outputs")
        key, ins = node.outputs[0], [self.tensors[k] for k in node.inputs]
        nonneg_in = all(t.non_negative for t in ins)
        if kind in _DROPPED:
            self.tensors[key] = ins[0]
        elif kind in _SAME_GRID:
            self.tensors[key] = _Tensor(self.clone_call(node), nonneg_in, ins[0].fixed, ins[0].grid)
        elif kind in _ACTIVATION_LAYERS:
            self.activation(node, ins[0])
        elif kind in _MERGES:
            self.merge(node, ins)
        elif kind is layers.AveragePooling2D and ins[0].grid is not None:
            # AVERAGE_POOL_2D keeps its input's scale: round back onto the input's grid
            out = ins[0].grid(self.clone_call(node))
            self.tensors[key] = _Tensor(out, nonneg_in, ins[0].fixed, ins[0].grid)
        elif kind in _POOLS:
            self.finish(key, self.clone_call(node), layer.name, nonneg_in)
        elif kind in _AFFINE:
            self.affine(node, ins[0])
        else:
            raise self.unsupported(node)

    def merge(self, node: _Node, ins: list[_Tensor]) -> None:
        layer, key = node.layer, node.outputs[0]
        grids = [t.grid for t in ins]
        exact_add = type(layer) is layers.Add and len(ins) == 2 and None not in grids
        if exact_add:
            add = QAdd(name=self.name(layer.name))
            out = add([t.value for t in ins])
        else:
            out = self.clone_call(node)
        nonneg = all(t.non_negative for t in ins) and type(layer) is not layers.Subtract
        fixed = ins[0].fixed
        if type(layer) in _SHARED_SCALE_MERGES and fixed and all(t.fixed == fixed for t in ins):
            self.tensors[key] = _Tensor(out, nonneg, fixed, ins[0].grid)  # e.g. gray -> RGB
        elif type(layer) in _FUSING_MERGES and self.fusable_activation(key):
            self.tensors[key] = _Tensor(out, nonneg)  # quantized after the fused ReLU
            if exact_add:
                self.link_after[self.graph.nodes[self.sole_user(key)].outputs[0]] = (add, grids)
        else:
            self.finish(key, out, layer.name, nonneg)
            if exact_add:
                add.link(grids, self.tensors[key].grid)

    def fusable_activation(self, key: int) -> str | None:
        """relu / relu6 when the only reader of `key` is such an activation layer."""
        user = self.sole_user(key)
        if user is None or user in self.skip:
            return None
        layer = self.graph.nodes[user].layer
        if type(layer) not in (layers.ReLU, layers.Activation):
            return None
        name = _activation_name(layer)
        return name if name in ("relu", "relu6") else None

    def activation(self, node: _Node, x: _Tensor) -> None:
        layer, key = node.layer, node.outputs[0]
        name = _activation_name(layer)
        if type(layer) is layers.Activation and name is None:
            what = getattr(layer.activation, "__name__", layer.activation)
            raise self.unsupported(
                node, f"activation {what!r} (supported: {', '.join(ACTIVATIONS)})"
            )
        if name == "linear":
            self.tensors[key] = x
        elif type(layer) is layers.Activation:
            self.emit_activation(key, x.value, name, layer.name)
        elif type(layer) is layers.Softmax:
            fixed = fixed_output_range("softmax", self.activation_bits)
            self.finish(key, self.clone_call(node), layer.name, True, fixed)
        else:
            nonneg = type(layer) is layers.ReLU and float(layer.negative_slope) == 0.0
            self.finish(key, self.clone_call(node), layer.name, nonneg)

    def emit_activation(self, key: int, x, activation: str, name: str) -> None:
        """A standalone activation on a quantized tensor as TFLite runs it. Sigmoid, softmax
        and tanh get TFLite's fixed output range; swish (silu) is LOGISTIC then MUL, with the
        sigmoid quantized in between."""
        bits = self.activation_bits
        if activation == "silu":
            s = layers.Activation("sigmoid", name=self.name(f"{name}_sigmoid"))(x)
            s = self.quantized(s, f"{name}_sigmoid", True, fixed_output_range("sigmoid", bits))
            y = layers.Multiply(name=self.name(name))([x, s.value])
            return self.finish(key, y, name, False)
        y = layers.Activation(activation, name=self.name(name))(x)
        fixed = fixed_output_range(activation, bits)
        self.finish(key, y, name, activation in NON_NEGATIVE_ACTIVATIONS, fixed)

    def affine(self, node: _Node, x: _Tensor) -> None:
        """Rescaling, Normalization, standalone BatchNormalization: per-channel MUL and ADD
        steps (`QAffine`) in TensorFlow's order, each an int8 op with its own quantizer. On a
        fixed-range input the output ranges are fixed too: the image of the input range
        (exact for a scalar scale), widened by TIE_MARGIN after an offset that is not a
        whole number of input steps (else every value would sit on a rounding tie)."""
        layer, key = node.layer, node.outputs[0]
        steps = _affine_steps(layer, node)
        if not steps:
            self.tensors[key] = x
        for i, (mode, values) in enumerate(steps):
            name = layer.name if i == len(steps) - 1 else f"{layer.name}_{mode}"
            op = QAffine(mode, values, bits=self.activation_bits, name=self.name(name))
            value = op(x.value)
            c = np.asarray(op.constant(), dtype=np.float64)
            if x.fixed is not None:
                fixed = _affine_range(x.fixed, mode, c, self.activation_bits)
                nonneg = fixed[0] >= 0
            else:
                fixed, nonneg = None, x.non_negative and bool(np.all(c >= 0))
            if i == len(steps) - 1:
                self.finish(key, value, name, nonneg, fixed)
            else:
                x = self.quantized(value, name, nonneg, fixed)

    def weighted(self, node: _Node) -> None:
        """Conv2D / DepthwiseConv2D / Dense (+ folded BN, + fused ReLU/ReLU6) -> Q layer."""
        layer = node.layer
        kernel, bias = _float_kernel(layer, node)
        activation = _activation_name(layer)
        if activation is None:
            what = getattr(layer.activation, "__name__", layer.activation)
            raise self.unsupported(
                node, f"activation {what!r} (supported: {', '.join(ACTIVATIONS)})"
            )
        key = node.outputs[0]
        if activation == "linear":
            user = self.sole_user(key)
            if user is not None and _foldable_bn(self.graph.nodes[user].layer, node.ranks[0]):
                kernel, bias = _fold_batch_norm(layer, kernel, bias, self.graph.nodes[user].layer)
                self.skip.add(user)
                key = self.graph.nodes[user].outputs[0]
            fused = self.fusable_activation(key)
            if fused:
                user = self.sole_user(key)
                self.skip.add(user)
                key, activation = self.graph.nodes[user].outputs[0], fused
        split = activation not in FUSED_ACTIVATIONS
        q = _quantized_layer(
            layer,
            "linear" if split else activation,
            self.weight_bits,
            self.per_channel,
            self.name(layer.name),
        )
        q.link_input(self.tensors[node.inputs[0]].grid)
        out = q(self.fill(node.args)[0])
        q.set_kernel(kernel, bias)
        if split:  # TFLite runs it as its own int8 op: quantize before and after
            linear = self.quantized(out, layer.name + "_linear", False)
            q.link_output(linear.grid)
            self.emit_activation(key, linear.value, activation, f"{layer.name}_{activation}")
        else:
            self.finish(key, out, layer.name, activation != "linear")
            q.link_output(self.tensors[key].grid)


def _channel_vector(values, node: _Node, what: str) -> np.ndarray:
    """A per-channel (last axis) constant as a vector (or a scalar), from a broadcastable
    array such as Normalization's mean of shape (1, 1, 1, C)."""
    values = np.asarray(keras.ops.convert_to_numpy(values), dtype=np.float64)
    if values.size > 1 and values.size != values.shape[-1]:
        raise QuantflowError(
            f"layer {node.path!r}: its {what} is not per channel of the last "
            f"axis (shape {values.shape}); only that is supported"
        )
    return values.reshape(-1) if values.size > 1 else values.reshape(())


def _affine_steps(layer, node: _Node) -> list[tuple[str, np.ndarray]]:
    """The MUL / ADD steps of Rescaling, Normalization or BatchNormalization (inference), in
    TensorFlow's order, without identity steps."""
    if isinstance(layer, layers.Rescaling):
        steps = [
            ("mul", _channel_vector(layer.scale, node, "scale")),
            ("add", _channel_vector(layer.offset, node, "offset")),
        ]
    elif isinstance(layer, layers.Normalization):
        if layer.invert:
            raise QuantflowError(
                f"layer {node.path!r}: Normalization(invert=True) is not supported"
            )
        mean = _channel_vector(layer.mean, node, "mean")
        std = np.maximum(np.sqrt(_channel_vector(layer.variance, node, "variance")), 1e-7)
        steps = [("add", -mean), ("mul", 1.0 / std)]
    else:
        axis = layer.axis[0] if isinstance(layer.axis, (list, tuple)) else layer.axis
        if axis not in (-1, node.ranks[0] - 1):
            raise QuantflowError(
                f"layer {node.path!r}: BatchNormalization over axis {axis}; "
                "only the last (channel) axis is supported"
            )
        mean = _channel_vector(layer.moving_mean, node, "moving mean")
        gamma = (
            np.ones_like(mean)
            if layer.gamma is None
            else _channel_vector(layer.gamma, node, "gamma")
        )
        beta = (
            np.zeros_like(mean) if layer.beta is None else _channel_vector(layer.beta, node, "beta")
        )
        factor = gamma / np.sqrt(
            _channel_vector(layer.moving_variance, node, "variance") + layer.epsilon
        )
        steps = [("mul", factor), ("add", beta - mean * factor)]
    identity = {"mul": 1.0, "add": 0.0}
    return [(mode, v) for mode, v in steps if not np.all(v == identity[mode])]


def _affine_range(fixed: tuple, mode: str, c: np.ndarray, bits: int) -> tuple[float, float]:
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


def _float_kernel(layer, node: _Node) -> tuple[np.ndarray, np.ndarray]:
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


def _foldable_bn(layer, rank: int) -> bool:
    """Whether `layer` is a BatchNormalization over the last axis of a rank-`rank` tensor."""
    if type(layer) is not layers.BatchNormalization:
        return False
    axis = layer.axis[0] if isinstance(layer.axis, (list, tuple)) else layer.axis
    return axis in (-1, rank - 1)


def _fold_batch_norm(layer, kernel, bias, bn) -> tuple[np.ndarray, np.ndarray]:
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


def _quantized_layer(layer, activation: str, bits: int, per_channel: bool, name: str):
    common = {"activation": activation, "bits": bits, "per_channel": per_channel, "name": name}
    if type(layer) is layers.Dense:
        return QDense(layer.units, **common)
    conv = {
        "kernel_size": layer.kernel_size,
        "strides": layer.strides,
        "padding": layer.padding,
        "dilation_rate": layer.dilation_rate,
    }
    if type(layer) is layers.DepthwiseConv2D:
        return QDepthwiseConv2D(depth_multiplier=layer.depth_multiplier, **conv, **common)
    return QConv2D(layer.filters, **conv, **common)


def fake_quant_model(
    model,
    *,
    weight_bits: int = 8,
    activation_bits: int = 8,
    per_channel: bool = True,
    symmetric: bool = True,
    input_range: tuple[float, float] | None = (0.0, 255.0),
) -> keras.Model:
    """The fake-quantized twin of a float functional Keras model (see the module doc), or
    of the model a weights pickle describes (`quantflow.weights.extract_weights` /
    `load_weights`: its arrays plus architecture). `weight_bits` and `activation_bits`
    from 2 to 16; `per_channel` weight thresholds; `symmetric` activation ranges (weights
    are always symmetric); `input_range` the fixed range of the model input (None:
    calibrated). Call `calibrate` before using it."""
    for what, bits in (("weight_bits", weight_bits), ("activation_bits", activation_bits)):
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 16:
            raise QuantflowError(f"{what} must be a whole number from 2 to 16, got {bits!r}")
    if input_range is not None:
        input_range = (float(input_range[0]), float(input_range[1]))
        if not input_range[0] <= 0.0 <= input_range[1] or input_range[0] == input_range[1]:
            raise QuantflowError(f"input_range {input_range} must contain 0 and not be empty")
    if isinstance(model, dict):
        from quantflow.weights import check_weights, rebuild_model

        model = rebuild_model(check_weights(model))
    if not isinstance(model, keras.Model):
        raise QuantflowError(
            f"fake_quant_model needs a Keras model or a weights pickle's contents, got "
            f"{type(model).__name__}"
        )
    graph = flatten_graph(model)
    transform = _Transform(graph, int(weight_bits), int(activation_bits), per_channel, symmetric)
    return transform.run(model, input_range)


# --------------------------------------------------------------------------- calibration


def activation_quantizers(qmodel) -> list[ActivationQuant]:
    return [layer for layer in qmodel.layers if isinstance(layer, ActivationQuant)]


def weight_quantizers(qmodel) -> list[_QuantizedOp]:
    return [layer for layer in qmodel.layers if isinstance(layer, _QuantizedOp)]


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
    the lower and upper percentiles, averaged over batches); weight thresholds max|W|.
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
                if q.symmetric:
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
        q.set_statistics(float(reduce_lo(lo)), float(reduce_hi(hi)))
    for layer in weight_quantizers(qmodel):
        layer.reset_thresholds()
    return thresholds(qmodel)


# --------------------------------------------------------------------------- accessors


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
