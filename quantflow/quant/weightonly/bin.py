"""``bin``: 2**bits equal bins between a tensor's min and max, each value replaced by the
centre of its bin (:func:`bin_quantize`)."""

from __future__ import annotations

import numpy as np

from quantflow.errors import QuantflowError
from quantflow.quant.weightonly.blocks import (
    _BLOCK,
    _blocks,
    _check,
    _label,
    _parallel,
    _range,
)

_TABLE_SIZE = 1 << 16  # up to this many bins, centres are a table (and float32 bins are fast)


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


def quantize(x, bits: int, *, name: str | None = None, threads: int | None = None):
    """The weight-only algorithm's entry (quantflow.quant.weightonly.apply): the binned
    values, and no format."""
    return bin_quantize(x, bits, name=name, threads=threads), None


def affine_exact(x, bits: int, tolerance: float = 1e-6) -> bool:
    """Whether the `bits`-bit bin grid of `x` (centres min + (i + 0.5) w, w = (max - min)
    / 2**bits) is an affine integer grid a runtime holds exactly: (q - z) * w for an
    integer zero point z, i.e. min / w + 0.5 a whole number (within `tolerance` of one).
    A constant tensor is exact (it is left unchanged)."""
    lo, hi = float(np.min(x)), float(np.max(x))
    if hi == lo:
        return True
    zero = lo / ((hi - lo) / 2.0**bits) + 0.5
    return abs(zero - round(zero)) <= tolerance
