"""Whole-tensor numpy work in cache-sized blocks on a shared thread pool, and the checks
both weight-only algorithms make of their input."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from quantflow.errors import QuantflowError

_BLOCK = 1 << 15  # values per block: the block and its temporaries stay in the CPU cache


_RANGE_BLOCK = 1 << 17  # values per block for min and max


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
