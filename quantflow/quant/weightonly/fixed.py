"""``fixed``: the "Neural Networks Quantization" reference's fixed point: a decimal shift
for tensors below 1 in magnitude, sign and magnitude, integer bits for the largest
magnitude and the rest fractional (:func:`fixed_point_quantize`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from quantflow.errors import QuantflowError
from quantflow.quant.weightonly.blocks import _BLOCK, _blocks, _check, _parallel, _range


@dataclass(frozen=True)
class FixedPointFormat:
    """The fixed-point format of one tensor (see fixed_point_quantize): values are scaled by
    10**decimal_shift, then stored as sign and magnitude, the magnitude an integer count of
    2**-fractional_bits with `magnitude_bits` bits (so at most `max_integer`)."""

    bits: int
    decimal_shift: int
    integer_bits: int
    fractional_bits: int
    sign_bit: bool

    @property
    def magnitude_bits(self) -> int:
        return self.bits - int(self.sign_bit)

    @property
    def max_integer(self) -> int:
        return (1 << self.magnitude_bits) - 1

    def as_dict(self) -> dict:
        """The record written per variable to errors.json."""
        return {
            "decimal_shift": self.decimal_shift,
            "integer_bits": self.integer_bits,
            "fractional_bits": self.fractional_bits,
            "sign_bit": self.sign_bit,
        }


_TEN_300 = float(10**300)


_SMALLEST_NORMAL = float(np.finfo(np.float64).tiny)


def _decimal_factors(k: int) -> list[float]:
    """float64 factors whose product is 10**k: float(10**k) (the nearest float64; exact for
    k <= 22) up to k = 300, and 1e300 as many times as needed before it beyond."""
    factors = []
    while k > 300:
        factors.append(_TEN_300)
        k -= 300
    return [*factors, float(10**k)]


def _decimal_shift(value: float, k: int) -> float:
    for factor in _decimal_factors(k):
        value *= factor
    return value


def fixed_point_format(max_magnitude: float, has_negative: bool, bits: int) -> FixedPointFormat:
    """The format fixed_point_quantize uses for a tensor whose largest magnitude is
    `max_magnitude` (float64, finite) and that holds a negative value or not."""
    m = float(max_magnitude)
    if not (np.isfinite(m) and m >= 0.0):
        raise QuantflowError(f"the largest magnitude must be finite, got {max_magnitude!r}")
    sign = bool(has_negative)
    if m == 0.0:  # all zero: stays zero (no integer part to hold)
        return FixedPointFormat(int(bits), 0, 0, int(bits) - int(sign), sign)
    k = 0
    if m < 1.0:  # smallest k with m * 10**k >= 1, as computed in float64
        k = max(0, int(np.floor(-np.log10(m))))
        while k > 0 and _decimal_shift(m, k - 1) >= 1.0:
            k -= 1
        while _decimal_shift(m, k) < 1.0:
            k += 1
    integer_bits = int(_decimal_shift(m, k)).bit_length()  # floor(log2(int part)) + 1
    return FixedPointFormat(int(bits), k, integer_bits, int(bits) - integer_bits - int(sign), sign)


def fixed_point_quantize(
    x, bits: int, *, name: str | None = None, threads: int | None = None
) -> np.ndarray:
    """Quantize to fixed point the way the "Neural Networks Quantization" reference does:
    decimal shift, sign and magnitude, `bits` bits in all.

    With m = max|x|:

    * decimal shift k: 0 if m >= 1, else the smallest k with m * 10**k >= 1 ("a fixed point
      decimal"); the shifted maximum M = m * 10**k is then >= 1;
    * sign bit s: 1 if x holds a negative value, else 0 (sign and magnitude, not two's
      complement: a 1-bit tensor with a negative value has no magnitude bit, so all zero);
    * integer bits I = floor(log2(floor(M))) + 1 (at least 1), fractional bits
      F = bits - I - s (may be zero or negative: steps of 2**-F >= 1 shifted units);
    * each value: q = round(x * 10**k * 2**F) to nearest, ties to even, saturated at
      +-(2**(bits - s) - 1) (both signs), dequantized as q / (10**k * 2**F).

    Everything is computed in float64 (10**k as the nearest float64, exact for k <= 22;
    for a float32 tensor with m >= 1e-12 the scaling is exact too) and the result rounded
    once to x's dtype (clipped to its finite range: 2**I may not fit it); float32 tensors
    with k <= 10 and at most 16 magnitude bits take a float32 path that gives the same
    results bit for bit (see _fixed_float32). One deliberate
    difference from the reference, which derives k and I from the signed maximum and
    saturates only positive values: k and I come from the largest magnitude, so a tensor
    whose most negative value is the largest behaves, and both signs saturate.

    A constant tensor is quantized like any other (it is unchanged when its value is
    representable, e.g. 0.7 at 4 bits: k = 1, I = 3, F = 1, q = 14). An all-zero tensor
    (m = 0) is returned unchanged (a copy). `bits` in 1..32; NaN/inf -> QuantflowError
    naming `name`. `threads`: how many CPU threads to use (default 1). The format chosen:
    :func:`fixed_point_quantize_with_format`.
    """
    return fixed_point_quantize_with_format(x, bits, name=name, threads=threads)[0]


def fixed_point_quantize_with_format(
    x, bits: int, *, name: str | None = None, threads: int | None = None
) -> tuple[np.ndarray, FixedPointFormat]:
    """:func:`fixed_point_quantize` and the :class:`FixedPointFormat` it chose."""
    x = _check(x, bits, name, threads)
    flat = np.ascontiguousarray(x).reshape(-1)
    lo, hi = _range(flat, name, threads) if x.size else (0.0, 0.0)
    fmt = fixed_point_format(max(-lo, hi), lo < 0.0, int(bits))
    if max(-lo, hi) == 0.0:
        return x.copy(), fmt
    plan = _FixedPlan(fmt, flat.dtype, lo, hi)
    out = np.empty_like(flat)
    if plan.float32:
        _fixed_float32(flat, out, plan, threads)
    else:

        def run(start: int, stop: int) -> None:
            buffer = np.empty(_BLOCK, np.float64)
            for s in _blocks(start, stop):
                plan.values(flat[s], out[s], buffer[: s.stop - s.start])

        _parallel(run, flat.size, threads)
    return out.reshape(x.shape), fmt


class _FixedPlan:
    """How one tensor's fixed-point format is applied: the float64 factors of 10**k * 2**F
    (2**F merged into the last factor where that is exact), and whether the float32 fast
    path applies."""

    def __init__(self, fmt: FixedPointFormat, dtype: np.dtype, lo: float, hi: float):
        self.dtype = dtype
        self.factors = _decimal_factors(fmt.decimal_shift)
        self.binary = fmt.fractional_bits  # applied by ldexp, unless it merges
        merged = math.ldexp(self.factors[-1], self.binary)
        if np.isfinite(merged) and merged >= _SMALLEST_NORMAL:  # factor * 2**F: exact
            self.factors[-1], self.binary = merged, 0
        self.top = float(fmt.max_integer)
        # whether the largest or the smallest value saturates (else no value does)
        extremes = np.empty(2, np.float64)
        self.values(np.array([hi, lo]), extremes, saturate=False)
        self.saturate_high, self.saturate_low = extremes[0] > self.top, extremes[1] < -self.top
        self.limit = float(np.finfo(dtype).max)
        self.clip_to_dtype = fmt.integer_bits >= np.finfo(dtype).maxexp  # 2**I > limit
        # float32 fast path: one factor c = 10**k * 2**F, exact in float32 (k <= 10), and
        # at most 16 magnitude bits, so that |x * c| < 2**16
        self.float32 = (
            dtype == np.float32
            and fmt.decimal_shift <= 10
            and fmt.magnitude_bits <= 16
            and not self.binary
            and not self.clip_to_dtype
        )
        if self.float32:
            self.c32 = np.float32(self.factors[0])
            self.float32 = (
                float(self.c32) == self.factors[0] and self.c32 >= np.finfo(np.float32).tiny
            )
        if self.float32:
            # |x * c| < 2**magnitude_bits: the float32 product is within half an ulp,
            # delta = 2**(magnitude_bits - 25), of the exact one. Its rint is the exact
            # rint unless it is within delta of a half-integer; those are redone in float64.
            delta = math.ldexp(1.0, fmt.magnitude_bits - 25)
            sure = np.float32(0.5 - 2.0 * delta)
            if sure > 0.5 - 2.0 * delta:
                sure = np.nextafter(sure, np.float32(0))
            self.sure, self.top32 = sure, np.float32(self.top)

    def values(self, x, out, buffer=None, *, saturate: bool = True) -> None:
        """The general path: out = the dequantized x, computed in float64 and rounded once
        to the dtype (without saturate: the integers q, unsaturated, in out's dtype)."""
        v = np.empty(x.shape, np.float64) if buffer is None else buffer
        np.multiply(x, self.factors[0], v, dtype=np.float64)
        for factor in self.factors[1:]:
            np.multiply(v, factor, v)
        if self.binary:
            np.ldexp(v, self.binary, v)
        np.rint(v, v)
        if not saturate:
            np.copyto(out, v, casting="unsafe")
            return
        np.clip(v, -self.top, self.top, out=v)
        if self.binary:
            np.ldexp(v, -self.binary, v)
        for factor in self.factors[::-1]:
            np.divide(v, factor, v)
        if self.clip_to_dtype:
            np.clip(v, -self.limit, self.limit, out=v)
        np.copyto(out, v, casting="unsafe")


def _fixed_float32(flat, out, plan: _FixedPlan, threads) -> None:
    """The fast path for float32 tensors whose plan allows it: t = x * c in float32, then
    rint, saturate and divide by c in float32. The division is correctly rounded, and for
    k <= 12 that equals rounding the float64 quotient to float32 (a quotient of an integer
    below 2**17 by 5**k * 2**e lies too far from every float32 midpoint for the float64
    rounding to land on one). Values whose t is within 2 * delta of a half-integer, found
    through 8-byte words of a mask, go through the general path."""
    c, sure, top = plan.c32, plan.sure, plan.top32

    def run(start: int, stop: int) -> None:
        scaled, offsets = np.empty(_BLOCK, np.float32), np.empty(_BLOCK, np.float32)
        # numpy's minimum and maximum are much faster with an array than with a scalar
        uppers, lowers = np.full(_BLOCK, top), np.full(_BLOCK, -top)
        unsure_at = np.zeros(-(-(stop - start) // 8) * 8, np.bool_)
        for s in _blocks(start, stop):
            size = s.stop - s.start
            t, d, o = scaled[:size], offsets[:size], out[s]
            np.multiply(flat[s], c, t)
            np.rint(t, o)
            np.subtract(t, o, d)  # exact
            np.absolute(d, d)
            np.greater_equal(d, sure, unsure_at[s.start - start : s.stop - start])
            if plan.saturate_high:
                np.minimum(o, uppers[:size], out=o)
            if plan.saturate_low:
                np.maximum(o, lowers[:size], out=o)
            np.divide(o, c, o)
        words = unsure_at.view(np.uint64).nonzero()[0]
        if words.size:
            where = (words[:, None] * 8 + np.arange(8)).reshape(-1) + start
            where = where[where < stop]
            fixed = np.empty(where.size, flat.dtype)
            plan.values(flat[where], fixed)
            out[where] = fixed

    _parallel(run, flat.size, threads)


def quantize(x, bits: int, *, name: str | None = None, threads: int | None = None):
    """The weight-only algorithm's entry (quantflow.quant.weightonly.apply): the values
    and their fixed-point format as a dict."""
    q, fmt = fixed_point_quantize_with_format(x, bits, name=name, threads=threads)
    return q, fmt.as_dict()
