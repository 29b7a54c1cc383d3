"""Weight-only quantization of a checkpoint: every chosen tensor is quantized and at once
dequantized, so it keeps its float dtype and the model runs unchanged, only less precise.

Two algorithms, both over whole tensors with numpy (in cache-sized blocks, no Python loop
over values):

* ``bin``: 2**bits equal bins between the tensor's min and max, each value replaced by the
  centre of its bin (:func:`bin_quantize`).
* ``fixed``: signed fixed point whose integer part just holds the largest magnitude
  (:func:`fixed_point_quantize`).
"""

from __future__ import annotations

import copy
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from quantflow.errors import QuantflowError

_BLOCK = 1 << 15  # values per block: the block and its temporaries stay in the CPU cache
_RANGE_BLOCK = 1 << 17  # values per block for min and max
_FLOAT32_CENTRE_BITS = 16  # up to this many bits, float32 tensors get float32 centres
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

    With n = 2**bits, width = (max - min) / n and edges e_k = min + k * width (computed in
    float64), a value belongs to the last bin k < n with x >= e_k: every bin is left-closed
    and right-open except the last, which is closed (max lands in bin n - 1). The bin of
    every value is exact with respect to those edges, values exactly on an edge included.
    Each value becomes its bin's centre c0 + k * width, c0 = min + width / 2, clipped to
    [min, max]; every value of a bin gets the same centre. For float32 tensors with bits
    <= 16, width >= 2**-110 and max(|min|, |max|) * float32(n / (max - min)) <= 2**15 - 1
    (width not below about max|x| * 2**-15: all but tiny or far-off-zero ranges) centres
    are computed in float32, float32(k) * float32(width) + float32(c0), within a few ulps
    of exact (float32 arithmetic is what makes this fast); otherwise in float64, then
    rounded to x's dtype. With bits=1 there are two bins, split at the midpoint. A
    constant tensor (min == max) is returned unchanged (a copy). `bits` in 1..32; NaN/inf
    -> QuantflowError naming `name`. `threads`: how many CPU threads to use (default 1;
    numpy releases the GIL, so more can help on big tensors and multi-core machines).
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
    grid = _Grid(lo, hi, n, width, flat.dtype == np.float32 and bits <= _FLOAT32_CENTRE_BITS)
    out = np.empty_like(flat)
    if grid.float32:
        _bin_float32(flat, out, grid, threads)
    else:
        _parallel(lambda a, b: _bin_exact(flat, out, a, b, grid), flat.size, threads)
    return out.reshape(x.shape)


class _Grid:
    """The bins of one tensor: edges lo + k * width (float64) and the centre rule, float32
    when the fast path applies (see bin_quantize)."""

    def __init__(self, lo: float, hi: float, n: int, width: float, float32: bool):
        self.lo, self.hi, self.n, self.width = lo, hi, n, width
        self.c0 = lo + 0.5 * width
        self.float32 = float32 and width >= 2.0**-110
        if self.float32:
            self.a = np.float32(n / (hi - lo))
            # Rounding of a, of x * a, of b and of the sum, plus the float64 edges' own
            # rounding, stay below 7.1 * 2**-24 * (max|x| * a + 1) < error.
            self.error = 2.0**-21 * (max(abs(lo), abs(hi)) * float(self.a) + 1.0)
            # error <= 2**-6 also keeps width >= max|x| * 2**-15: float32 centres are then
            # within a few ulps of exact, far inside their bins and [lo, hi]
            self.float32 = self.error <= 2.0**-6
        self.c0_32, self.width_32 = np.float32(self.c0), np.float32(width)

    def bins(self, values) -> np.ndarray:
        """Exact bins (as float64) of any float values: a float64 estimate of k, then one
        step down or up against the float64 edges."""
        v = np.asarray(values, dtype=np.float64)
        k = np.floor((v - self.lo) / self.width)
        np.maximum(np.minimum(k, self.n - 1.0, out=k), 0.0, out=k)
        k -= v < self.lo + k * self.width
        k += v >= self.lo + (k + 1.0) * self.width
        np.minimum(k, self.n - 1.0, out=k)
        return k

    def centres(self, bins: np.ndarray, dtype) -> np.ndarray:
        """The centres of bins (float64 k), in `dtype`, by the tensor's centre rule."""
        if self.float32:
            c = bins.astype(np.float32) * self.width_32 + self.c0_32
        else:
            c = (self.c0 + bins * self.width).astype(dtype)
        return np.maximum(np.minimum(c, dtype.type(self.hi)), dtype.type(self.lo))


def _bin_exact(flat, out, start: int, stop: int, grid: _Grid) -> None:
    """The general path (any float dtype, any bits), block by block."""
    for s in _blocks(start, stop):
        out[s] = grid.centres(grid.bins(flat[s]), flat.dtype)


def _bin_float32(flat, out, grid: _Grid, threads) -> None:
    """The fast path for float32 tensors whose grid allows it: a float32 estimate
    t = x * a + b of the bin's position whose rounding error is below `error`, biased by b
    so that the true position lies in (t, t + 2 * error). So floor(t) is the bin unless
    frac(t) > 1 - 2 * error; those few values, found through 8-byte words of a mask, go
    through the exact path. Centres: floor(t) * width_32 + c0_32, in float32."""
    lo, a, error = grid.lo, grid.a, grid.error
    b = np.float32(-lo * float(a) - error)
    unsure = np.float32(1.0 - 2.0 * error)
    if unsure > 1.0 - 2.0 * error:
        unsure = np.nextafter(unsure, np.float32(0))
    width, c0 = grid.width_32, grid.c0_32

    def run(start: int, stop: int) -> None:
        estimates = np.empty(_BLOCK, np.float32)
        unsure_at = np.zeros(-(-(stop - start) // 8) * 8, np.bool_)
        for s in _blocks(start, stop):
            t, o = estimates[: s.stop - s.start], out[s]
            np.multiply(flat[s], a, t)  # outputs passed positionally: less call overhead
            np.add(t, b, t)
            np.floor(t, o)  # the output holds the bins for now
            np.subtract(t, o, t)  # frac(t), exact
            np.greater(t, unsure, unsure_at[s.start - start : s.stop - start])
            np.multiply(o, width, o)
            np.add(o, c0, o)
        words = unsure_at.view(np.uint64).nonzero()[0]
        if words.size:
            where = (words[:, None] * 8 + np.arange(8)).reshape(-1) + start
            where = where[where < stop]
            out[where] = grid.centres(grid.bins(flat[where]), flat.dtype)

    _parallel(run, flat.size, threads)


def fixed_point_quantize(
    x, bits: int, *, name: str | None = None, threads: int | None = None
) -> np.ndarray:
    """Quantize to signed fixed point with `bits` bits in all, one of them the sign.

    With m = max|x|, the integer part gets I = 0 bits if m < 1 else floor(log2(m)) + 1
    (just enough to hold m), the fraction F = bits - 1 - I bits (negative F: steps coarser
    than 1) and step = 2**-F. Then q = clip(round(x / step), -2**(bits-1), 2**(bits-1) - 1)
    * step: round to nearest, ties to even (numpy.rint), saturating at the representable
    range [-2**I, 2**I - step] (only the top can saturate, as |x| <= m < 2**I). With bits=1
    only the sign bit is left: q is -2**I or 0. Where 2**I overflows x's dtype (|x| near
    its largest value) results are clipped to the dtype's finite range. An all-zero tensor
    is returned unchanged (a copy). `bits` in 1..32; NaN/inf -> QuantflowError naming
    `name`. `threads`: how many CPU threads to use (default 1).
    """
    x = _check(x, bits, name, threads)
    if x.size == 0:
        return x.copy()
    flat = np.ascontiguousarray(x).reshape(-1)
    lo, hi = _range(flat, name, threads)
    m = max(-lo, hi)
    if m == 0.0:
        return x.copy()
    int_bits = max(int(np.frexp(m)[1]), 0)  # m = f * 2**e, f in [0.5, 1): floor(log2 m) = e - 1
    frac_bits = int(bits) - 1 - int_bits
    top = float(2 ** (int(bits) - 1) - 1)
    out = np.empty_like(flat)
    if flat.dtype == np.float32 and abs(frac_bits) <= 120:
        # Exact in float32: scaling by a power of two is exact, rint of a float32 is one,
        # and |x / step| < 2**(bits-1), so the lower bound never clips and the upper one
        # (rounded to float32 for bits > 25) only clips the 2**(bits-1) that rounding up can
        # produce when bits <= 24.
        scale, step, upper = (
            np.float32(np.ldexp(1.0, frac_bits)),
            np.float32(np.ldexp(1.0, -frac_bits)),
            np.float32(top),
        )

        def run(start: int, stop: int) -> None:
            uppers = np.full(_BLOCK, upper)  # numpy's minimum is much faster with an array
            for s in _blocks(start, stop):
                o = out[s]
                np.multiply(flat[s], scale, o)
                np.rint(o, o)
                np.minimum(o, uppers[: s.stop - s.start], out=o)
                np.multiply(o, step, o)

    else:
        scale, step = np.ldexp(1.0, frac_bits), np.ldexp(1.0, -frac_bits)
        limit = float(np.finfo(flat.dtype).max)

        def run(start: int, stop: int) -> None:
            for s in _blocks(start, stop):
                q = np.rint(flat[s].astype(np.float64) * scale)
                np.clip(q, -top - 1.0, top, out=q)
                q *= step
                np.clip(q, -limit, limit, out=q)  # 2**I itself may not fit the dtype
                np.copyto(out[s], q, casting="unsafe")

    _parallel(run, flat.size, threads)
    return out.reshape(x.shape)


def relative_error(x, q) -> float:
    """||x - q||_2 / ||x||_2 in float64 (0.0 when both are all zero, inf when only x is)."""
    x64 = np.asarray(x, dtype=np.float64)
    diff = float(np.linalg.norm((x64 - np.asarray(q, dtype=np.float64)).ravel()))
    norm = float(np.linalg.norm(x64.ravel()))
    if norm == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / norm


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
    ``quantization``. errors: ``per_variable`` {"layer/role": relative L2 error} of the
    quantized variables, their ``min``, ``max`` and unweighted ``mean`` (None if nothing was
    quantized), ``algorithm`` and ``bits``. `threads` goes to the algorithm.
    """
    from quantflow.weights import check_weights

    check_weights(data)
    try:
        quantize = ALGORITHMS[algorithm]
    except (KeyError, TypeError):
        raise QuantflowError(
            f"unknown weight quantization algorithm {algorithm!r}; choose one "
            f"of: {', '.join(sorted(ALGORITHMS))}"
        ) from None
    _check(np.zeros(1, np.float32), bits, None, threads)
    metadata = data["metadata"]
    trainable = metadata.get("trainable", {})
    classes = metadata.get("layer_classes", {})
    layers, per_variable = {}, {}
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
            else:
                layers[layer][role] = quantize(array, bits, name=key, threads=threads)
                per_variable[key] = relative_error(array, layers[layer][role])
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
        "per_variable": per_variable,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "mean": float(np.mean(values)) if values else None,
        "algorithm": algorithm,
        "bits": int(bits),
    }
    return {**data, "metadata": new_metadata, "layers": layers}, errors


def packed_size_bytes(data: dict) -> int:
    """Bytes to store a weights dict with its quantized variables packed at their bit width
    (plus 8 bytes of parameters each: bin's minimum and width, or fixed point's exponent)
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
