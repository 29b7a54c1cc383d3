"""Pure tensor math of the quantization core: fake quantization with the FAT gradient
(straight-through for the rounding), the constant-kernel grids the TFLite converter folds,
and TFLite's integer arithmetic (float32 scales, XNNPACK's requantization and fixed-point
ADD). No layers, no variables: functions of tensors.

The FAT gradient: for a value inside the range d y / d hi = (y - x) / (hi - lo) = -d y / d
lo, outside it the gradient goes to the nearer edge, so training shrinks a range that is
too wide, not only widens one (TensorFlow's own fake-quant gradient only ever widens).

`export_mode` switches every op here to the plain graph the TFLite converter expects."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import tensorflow as tf

MIN_THRESHOLD = 1e-6  # floor of T_max: an all-zero tensor or channel still has a valid range

_EXPORT = [False]  # set by `export_mode`: layers trace the graph the converter expects


@contextmanager
def export_mode():
    """Within the block, fake-quant models trace as the TFLite converter wants them (for
    `quantflow.deploy.check.convert`): plain fake-quant ops without the FAT custom gradients (the
    conversion takes about half the time) and each quantized layer as fake-quant kernel ->
    op -> bias, the bias already on TFLite's int32 grid, instead of the exact integer
    arithmetic the layers simulate otherwise (see `quantflow.quant.layers.QuantizedOp`).
    Same outputs."""
    previous = _EXPORT[0]
    _EXPORT[0] = True
    try:
        yield
    finally:
        _EXPORT[0] = previous


def exporting() -> bool:
    """Whether an `export_mode` block is active."""
    return _EXPORT[0]


def fat_gradient(x, y, lo, hi, dy, per_channel: bool):
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


def ste_round(x):
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
        return y, lambda dy: fat_gradient(x, y, lo, hi, dy, per_channel)

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
            dw, d_lo, d_hi = fat_gradient(w, y, -t, t, dy, per_channel)
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


def f32_step(lo, hi, levels: int):
    """(hi - lo) / levels as the TFLite converter computes a scale from a fake-quant range:
    in double precision, stored as float32 (float32 arithmetic is sometimes one ulp off,
    enough to move a product that sits on a rounding tie to its other side)."""
    wide = tf.cast(hi, tf.float64) - tf.cast(lo, tf.float64)
    return tf.cast(wide / float(levels), tf.float32)


def requantized(acc, multiplier, activation: str, out_step):
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


def requantized_builtin(acc, s_in, s_w, s_out, activation: str):
    """The int32 accumulator `acc` (a float32 tensor of whole numbers) requantized as
    LiteRT's built-in integer kernels do it (those run a kernel stored as INT4, which the
    XNNPACK delegate does not take): the multiplier s_in s_w / s_out (per channel, in
    double precision) as q * 2**shift, q = round(frac * 2**31) with frac in [0.5, 1); then
    two roundings (gemmlowp): round(acc * 2**max(shift, 0) * q / 2**31), half away from
    zero, then a rounding right shift by -shift, half away from zero; clamped to the fused
    activation's range. Returned in real units, a hair inside its rounding interval (as
    `requantized`); no gradient."""
    s_in, s_w, s_out = (tf.cast(tf.stop_gradient(v), tf.float64) for v in (s_in, s_w, s_out))
    multiplier = s_in * s_w / s_out
    shift = tf.floor(tf.math.log(multiplier) / np.log(2.0)) + 1.0
    frac = multiplier / tf.pow(tf.constant(2.0, tf.float64), shift)
    shift = shift + tf.cast(frac >= 1.0, tf.float64) - tf.cast(frac < 0.5, tf.float64)
    frac = multiplier / tf.pow(tf.constant(2.0, tf.float64), shift)
    q = tf.sign(frac) * tf.floor(tf.abs(frac) * 2.0**31 + 0.5)  # std::round
    overflow = q >= 2.0**31
    q = tf.where(overflow, q / 2.0, q)
    shift = shift + tf.cast(overflow, tf.float64)
    left = tf.cast(tf.maximum(shift, 0.0), tf.int64)
    right = tf.cast(tf.maximum(-shift, 0.0), tf.int64)
    x = tf.cast(tf.stop_gradient(acc), tf.int64) * tf.bitwise.left_shift(tf.ones_like(left), left)
    ab = x * tf.cast(q, tf.int64)
    nudge = tf.where(ab >= 0, tf.constant(1 << 30, tf.int64), tf.constant(1 - (1 << 30), tf.int64))
    high = tf.truncatediv(ab + nudge, tf.constant(1 << 31, tf.int64))
    right = tf.broadcast_to(right, tf.shape(high))
    mask = tf.bitwise.left_shift(tf.ones_like(right), right) - 1
    remainder = tf.bitwise.bitwise_and(high, mask)
    threshold = tf.bitwise.right_shift(mask, tf.ones_like(mask)) + tf.cast(high < 0, tf.int64)
    v = tf.bitwise.right_shift(high, right) + tf.cast(remainder > threshold, tf.int64)
    v = tf.cast(v, tf.float32)
    if activation in ("relu", "relu6"):
        v = tf.maximum(v, 0.0)
    if activation == "relu6":
        v = tf.minimum(v, tf.round(6.0 / tf.cast(s_out, tf.float32)))
    # the rounded value, a hair inside its rounding interval (the output quantizer's own
    # rounding lands on it); the float product for the residual's sign
    exact = tf.cast(tf.cast(tf.stop_gradient(acc), tf.float64) * multiplier, tf.float32)
    return (v + tf.clip_by_value(exact - v, -0.49, 0.49)) * tf.cast(s_out, tf.float32)


def fixed_point_add(a, b, sa, sb, so):
    """a + b (on the grids of steps `sa`, `sb`) onto the output grid of step `so`, as
    LiteRT's XNNPACK ADD computes it: each input's scale over the output's as a 20-bit
    fixed-point multiplier (m = rint(float32(s_x / s_out) * 2**shift), shift = 20 - exponent
    of the larger ratio), acc = (q_a m_a + q_b m_b + 2**(shift-1)) >> shift. Returned in real
    units a hair inside the rounding interval (as `requantized`); no gradient."""
    sa, sb, so = (tf.stop_gradient(v) for v in (sa, sb, so))
    ratios = [tf.cast(sa / so, tf.float64), tf.cast(sb / so, tf.float64)]
    exponent = tf.floor(tf.math.log(tf.maximum(*ratios)) / np.log(2.0))
    scale = tf.pow(tf.constant(2.0, tf.float64), 20.0 - exponent)
    ma, mb = (tf.round(r * scale) for r in ratios)  # rint: half to even, as lrintf
    qa = tf.round(tf.cast(tf.stop_gradient(a) / sa, tf.float64))
    qb = tf.round(tf.cast(tf.stop_gradient(b) / sb, tf.float64))
    exact = (qa * ma + qb * mb) / scale
    r = tf.floor(exact + 0.5)
    return tf.cast(r + tf.clip_by_value(exact - r, -0.49, 0.49), tf.float32) * so
