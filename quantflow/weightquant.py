"""Weight-only quantization of a checkpoint: every chosen tensor is quantized and at once
dequantized, so it keeps its float dtype and the model runs unchanged, only less precise.

Two algorithms, both over whole tensors with numpy (in cache-sized blocks, no Python loop
over values):

* ``bin``: 2**bits equal bins between the tensor's min and max, each value replaced by the
  centre of its bin (:func:`bin_quantize`).
* ``fixed``: the "Neural Networks Quantization" reference's fixed point: a decimal shift
  for tensors below 1 in magnitude, sign and magnitude, integer bits for the largest
  magnitude and the rest fractional (:func:`fixed_point_quantize`).
"""

from __future__ import annotations

import copy
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from quantflow.errors import QuantflowError

_BLOCK = 1 << 15  # values per block: the block and its temporaries stay in the CPU cache
_RANGE_BLOCK = 1 << 17  # values per block for min and max
_TABLE_SIZE = 1 << 16  # up to this many bins, centres are a table (and float32 bins are fast)
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _parallel(fn, size: int, threads: int | None) -> list:
    """fn(start, stop) over block-aligned parts of range(size), one part per thread (default
    1), in a shared pool (numpy releases the GIL in its loops); inline for small arrays."""
    threads = 1 if threads is None else threads
    blocks = -(-size // _BLOCK)
    parts = max(1, min(threads, blocks // 2))
    if parts == 1:
        return [fn(0, size)]
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(
                max(2, os.cpu_count() or 1), thread_name_prefix="quantflow-weightquant"
            )
    per = -(-blocks // parts) * _BLOCK
    return list(_POOL.map(lambda start: fn(start, min(start + per, size)), range(0, size, per)))


def _blocks(start: int, stop: int, size: int | None = None):
    size = size or _BLOCK
    for begin in range(start, stop, size):
        yield slice(begin, min(begin + size, stop))


def _label(name: str | None) -> str:
    return f"tensor {name!r}" if name else "the tensor"


def _check(x, bits, name: str | None, threads) -> np.ndarray:
    """The tensor as an array, after checking `bits`, `threads` and its dtype."""
    if (
        isinstance(bits, (bool, np.bool_))
        or not isinstance(bits, (int, np.integer))
        or not 1 <= bits <= 32
    ):
        raise QuantflowError(
            f"quantization bits must be a whole number from 1 to 32, "
            f"got {bits!r} for {_label(name)}"
        )
    if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
        raise QuantflowError(f"threads must be a positive whole number, got {threads!r}")
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise QuantflowError(
            f"{_label(name)} has dtype {x.dtype}; only float tensors are quantized"
        )
    return x


def _range(flat: np.ndarray, name: str | None, threads) -> tuple[float, float]:
    """(min, max) as Python floats; NaN or inf anywhere -> QuantflowError (min and max
    propagate NaN, so no separate pass is needed)."""

    def run(start: int, stop: int) -> list:
        # block by block, so that max reads what min just brought into the cache
        return [(flat[s].min(), flat[s].max()) for s in _blocks(start, stop, _RANGE_BLOCK)]

    if flat.size <= _RANGE_BLOCK:
        lo, hi = float(flat.min()), float(flat.max())
    else:
        parts = np.array(sum(_parallel(run, flat.size, threads), []), dtype=np.float64)
        lo, hi = float(parts[:, 0].min()), float(parts[:, 1].max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise QuantflowError(
            f"{_label(name)} holds NaN or infinite values; fix the checkpoint "
            "(a diverged training run?) before quantizing it"
        )
    return lo, hi


def bin_quantize(x, bits: int, *, name: str | None = None, threads: int | None = None):
    """Quantize to the centres of 2**bits equal bins spanning [min(x), max(x)].

    With n = 2**bits and, in float64, width = (max - min) / n and edges e_i = min + i * width,
    a value belongs to the last bin i < n with x >= e_i: every bin is left-closed and
    right-open except the last, which is closed (max lands in bin n - 1). The bin of every
    value is exact with respect to those edges, values exactly on an edge included. Each
    value becomes its bin's centre min + (i + 0.5) * width, computed in float64 and rounded
    once to x's dtype (bit for bit, whatever the path), then clipped to [min, max] (which
    only matters for float64 tensors whose range float64 cannot subtract exactly); every
    value of a bin gets the same centre. With bits=1 there are two bins, split at the
    midpoint. A constant tensor (min == max) is returned unchanged (a copy). `bits` in
    1..32; NaN/inf -> QuantflowError naming `name`. `threads`: how many CPU threads to use
    (default 1; numpy releases the GIL, so more can help on big tensors and multi-core
    machines).

    Speed: up to 16 bits (and 2**bits not above the tensor's size) the centres are a table
    gathered from. For float32 tensors with such a table, width >= 2**-110 and
    max(|min|, |max|) * float32(n / (max - min)) <= 2**15 - 1 (all but tiny or far-off-zero
    ranges) the bins are found in float32 arithmetic, with the few values it cannot decide
    (next to an edge) redone in float64; otherwise in float64.
    """
    x = _check(x, bits, name, threads)
    if x.size == 0:
        return x.copy()
    flat = np.ascontiguousarray(x).reshape(-1)
    lo, hi = _range(flat, name, threads)
    if lo == hi:
        return x.copy()
    n = 1 << int(bits)
    width = (hi - lo) / n
    if not np.isfinite(width) or width == 0.0:
        raise QuantflowError(
            f"the range [{lo}, {hi}] of {_label(name)} cannot be split into {n} bins in float64"
        )
    grid = _Grid(lo, hi, n, width, flat.dtype, flat.size)
    out = np.empty_like(flat)
    if grid.float32:
        _bin_float32(flat, out, grid, threads)
    else:
        _parallel(lambda a, b: _bin_exact(flat, out, a, b, grid), flat.size, threads)
    return out.reshape(x.shape)


class _Grid:
    """The bins of one tensor: edges lo + i * width (float64), centres lo + (i + 0.5) *
    width (float64, rounded once to the dtype; a table up to 16 bits, unless the tensor
    has fewer values than bins) and whether the float32 fast path for the bins applies
    (see bin_quantize)."""

    def __init__(self, lo: float, hi: float, n: int, width: float, dtype: np.dtype, size: int = 0):
        self.lo, self.hi, self.n, self.width, self.dtype = lo, hi, n, width, dtype
        self.table = None
        if n <= _TABLE_SIZE and n <= max(size, 256):
            self.table = self.centres(np.arange(n, dtype=np.float64))
        self.float32 = dtype == np.float32 and self.table is not None and width >= 2.0**-110
        if self.float32:
            self.a = np.float32(n / (hi - lo))
            # Rounding of a, of x * a, of b and of the sum, plus the float64 edges' own
            # rounding, stay below 7.1 * 2**-24 * (max|x| * a + 1) < error.
            self.error = 2.0**-21 * (max(abs(lo), abs(hi)) * float(self.a) + 1.0)
            # error <= 2**-6: few values fall within 2 * error of an edge
            self.float32 = self.error <= 2.0**-6

    def bins(self, values) -> np.ndarray:
        """Exact bins (as float64) of any float values: a float64 estimate of i, then one
        step down or up against the float64 edges."""
        v = np.asarray(values, dtype=np.float64)
        k = np.floor((v - self.lo) / self.width)
        np.maximum(np.minimum(k, self.n - 1.0, out=k), 0.0, out=k)
        k -= v < self.lo + k * self.width
        k += v >= self.lo + (k + 1.0) * self.width
        np.minimum(k, self.n - 1.0, out=k)
        return k

    def centres(self, bins: np.ndarray) -> np.ndarray:
        """The centres of bins (float64 i) in the tensor's dtype: lo + (i + 0.5) * width in
        float64 (i + 0.5 is exact), rounded once, clipped to [lo, hi]."""
        if self.table is not None:
            return self.table.take(bins.astype(np.intp))
        c = (self.lo + (bins + 0.5) * self.width).astype(self.dtype)
        hi, lo = self.dtype.type(self.hi), self.dtype.type(self.lo)
        return np.maximum(np.minimum(c, hi, out=c), lo, out=c)


def _bin_exact(flat, out, start: int, stop: int, grid: _Grid) -> None:
    """The general path (any float dtype, any bits), block by block."""
    for s in _blocks(start, stop):
        out[s] = grid.centres(grid.bins(flat[s]))


def _bin_float32(flat, out, grid: _Grid, threads) -> None:
    """The fast path for float32 tensors whose grid allows it: a float32 estimate
    t = x * a + b of the bin's position whose rounding error is below `error`, biased by b
    so that the true position lies in (t, t + 2 * error). So floor(t) is the bin unless
    frac(t) > 1 - 2 * error; those few values, found through 8-byte words of a mask, go
    through the exact path. Centres: gathered from the float64-computed table, which gets
    bin 0's centre once more at its end: floor(t) is -1 for t in (-2 * error, 0), where the
    bin is 0, and index -1 wraps to that entry (whether or not frac(t) = fl(t + 1) flags it)."""
    lo, a, error = grid.lo, grid.a, grid.error
    table = np.append(grid.table, grid.table[0])
    b = np.float32(-lo * float(a) - error)
    unsure = np.float32(1.0 - 2.0 * error)
    if unsure > 1.0 - 2.0 * error:
        unsure = np.nextafter(unsure, np.float32(0))

    def run(start: int, stop: int) -> None:
        estimates = np.empty(_BLOCK, np.float32)
        index = np.empty(_BLOCK, np.int32)
        unsure_at = np.zeros(-(-(stop - start) // 8) * 8, np.bool_)
        for s in _blocks(start, stop):
            t, o, i = estimates[: s.stop - s.start], out[s], index[: s.stop - s.start]
            np.multiply(flat[s], a, t)  # outputs passed positionally: less call overhead
            np.add(t, b, t)
            np.floor(t, o)  # the output holds the bins for now
            np.subtract(t, o, t)  # frac(t), exact for t >= 0
            np.greater(t, unsure, unsure_at[s.start - start : s.stop - start])
            np.copyto(i, o, casting="unsafe")
            np.take(table, i, out=o, mode="wrap")  # numpy's fastest mode with an output
        words = unsure_at.view(np.uint64).nonzero()[0]
        if words.size:
            where = (words[:, None] * 8 + np.arange(8)).reshape(-1) + start
            where = where[where < stop]
            out[where] = grid.centres(grid.bins(flat[where]))

    _parallel(run, flat.size, threads)


# ------------------------------------------------------------------ fixed point


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


def relative_error(x, q) -> float:
    """||x - q||_2 / ||x||_2 in float64, as a fraction (0.0 when both are all zero, inf
    when only x is)."""
    x64 = np.asarray(x, dtype=np.float64)
    diff = float(np.linalg.norm((x64 - np.asarray(q, dtype=np.float64)).ravel()))
    norm = float(np.linalg.norm(x64.ravel()))
    if norm == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / norm


def relative_error_pct(x, q) -> float:
    """The relative error in percent, as the reference reports it:
    100 * ||x - q||_2 / ||x||_2."""
    return 100.0 * relative_error(x, q)


ALGORITHMS = {"bin": bin_quantize, "fixed": fixed_point_quantize}


def quantize_weights(
    data: dict,
    algorithm: str,
    bits: int,
    *,
    keep_batchnorm_float: bool = False,
    keep_bias_float: bool = False,
    threads: int | None = None,
) -> tuple[dict, dict]:
    """Quantize (and dequantize) every trainable variable of a weights dict from
    :func:`quantflow.weights.extract_weights`: kernels, biases, BatchNorm gamma and beta.
    Non-trainable variables (BatchNorm moving mean and variance) stay float; so do
    BatchNormalization layers' parameters with `keep_batchnorm_float` and every ``bias``
    with `keep_bias_float`.

    Returns (new weights dict, errors). The input is left untouched; the new metadata gets
    ``quantization``. errors (what errors.json holds): ``algorithm``, ``bits``,
    ``relative_error_pct`` {"layer/role": 100 * ||x - q||_2 / ||x||_2} of the quantized
    variables, their ``relative_error_pct_min``, ``_max`` and unweighted ``_mean`` (None if
    nothing was quantized), and for ``fixed`` ``fixed_point`` {"layer/role":
    {decimal_shift, integer_bits, fractional_bits, sign_bit}}. `threads` goes to the
    algorithm.
    """
    from quantflow.weights import check_weights

    check_weights(data)
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise QuantflowError(
            f"unknown weight quantization algorithm {algorithm!r}; choose one "
            f"of: {', '.join(sorted(ALGORITHMS))}"
        )
    _check(np.zeros(1, np.float32), bits, None, threads)
    metadata = data["metadata"]
    trainable = metadata.get("trainable", {})
    classes = metadata.get("layer_classes", {})
    layers, per_variable, formats = {}, {}, {}
    for layer, roles in data["layers"].items():
        keep_layer = keep_batchnorm_float and classes.get(layer) == "BatchNormalization"
        layers[layer] = {}
        for role, array in roles.items():
            key = f"{layer}/{role}"
            if key not in trainable:
                raise QuantflowError(
                    f"weights metadata does not say whether {key} is "
                    "trainable; re-create them with extract_weights"
                )
            keep = (
                not trainable[key]
                or keep_layer
                or (keep_bias_float and role.rsplit("/", 1)[-1] == "bias")
            )
            if keep:
                layers[layer][role] = array.copy()
                continue
            if algorithm == "fixed":
                q, fmt = fixed_point_quantize_with_format(array, bits, name=key, threads=threads)
                formats[key] = fmt.as_dict()
            else:
                q = ALGORITHMS[algorithm](array, bits, name=key, threads=threads)
            layers[layer][role] = q
            per_variable[key] = relative_error_pct(array, q)
    new_metadata = copy.deepcopy(metadata)
    new_metadata["quantization"] = {
        "algorithm": algorithm,
        "bits": int(bits),
        "keep_batchnorm_float": bool(keep_batchnorm_float),
        "keep_bias_float": bool(keep_bias_float),
        "quantized": sorted(per_variable),
    }
    values = list(per_variable.values())
    errors = {
        "algorithm": algorithm,
        "bits": int(bits),
        "relative_error_pct": per_variable,
        "relative_error_pct_min": min(values) if values else None,
        "relative_error_pct_max": max(values) if values else None,
        "relative_error_pct_mean": float(np.mean(values)) if values else None,
    }
    if algorithm == "fixed":
        errors["fixed_point"] = formats
    return {**data, "metadata": new_metadata, "layers": layers}, errors


def packed_size_bytes(data: dict) -> int:
    """Bytes to store a weights dict with its quantized variables packed at their bit width
    (plus 8 bytes of parameters each: bin's minimum and width, or fixed point's decimal
    shift, integer bits and sign flag)
    and every other variable (e.g. BatchNorm moving statistics) in float32."""
    quantization = data["metadata"].get("quantization") or {}
    quantized = set(quantization.get("quantized", ()))
    bits = int(quantization.get("bits", 32))
    total = 0
    for layer, roles in data["layers"].items():
        for role, array in roles.items():
            if f"{layer}/{role}" in quantized:
                total += -(-array.size * bits // 8) + 8
            else:
                total += array.size * 4
    return total
