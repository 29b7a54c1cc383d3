"""Benchmark: throughput of weight-only quantization against a plain numpy copy.

A seeded synthetic checkpoint of 100 million float32 parameters split into a few hundred
tensors of realistic, varied sizes (kernels from 10 thousand to 4 million values, small bias
and BatchNorm vectors) goes through: a numpy copy of every tensor, `bin` at 8 bits and
`fixed` at 8 bits, interleaved and repeated (best run of each kept). Throughput is input
bytes / seconds; the target is at least a quarter of the copy's. Each pass keeps its
outputs until it ends, as building a new checkpoint would. Figures and targets go to
benchmarks/results/weightquant.json (and are printed).

    .venv/bin/python benchmarks/weightquant.py [--params 100000000] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quantflow.workflow.environment import machine_description  # noqa: E402
from quantflow.quant.weightonly.bin import bin_quantize  # noqa: E402
from quantflow.quant.weightonly.fixed import fixed_point_quantize  # noqa: E402

TARGET_RATIO_TO_COPY = 0.25
BITS = 8


def synthetic_checkpoint(params: int, seed: int = 0) -> list[np.ndarray]:
    """About 300 float32 tensors totalling `params` values: 150 kernels with log-uniform
    sizes (scaled so that the total is exact) and 150 vectors of 64 to 4096 values,
    normally distributed with a per-tensor scale, as trained weights are."""
    rng = np.random.default_rng(seed)
    vectors = rng.integers(64, 4097, size=150)
    kernels = np.exp(rng.uniform(np.log(1e4), np.log(4e6), size=150))
    kernels = np.maximum(1, np.floor(kernels * (params - vectors.sum()) / kernels.sum()))
    kernels[-1] += params - vectors.sum() - kernels.sum()
    sizes = rng.permutation(np.concatenate([kernels, vectors]).astype(np.int64))
    tensors = []
    for size in sizes:
        rows = next(d for d in (64, 32, 16, 8, 4, 2, 1) if size % d == 0)
        scale = np.float32(rng.uniform(0.01, 0.2))
        tensors.append(rng.standard_normal((rows, size // rows), dtype=np.float32) * scale)
    assert sum(t.size for t in tensors) == params
    return tensors


def timed_pass(fn, tensors) -> float:
    start = time.perf_counter()
    outputs = [fn(t) for t in tensors]
    seconds = time.perf_counter() - start
    del outputs
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=100_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for the quantizers (the copy is numpy's, one thread)",
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/weightquant.json"))
    args = parser.parse_args()

    load_before = round(os.getloadavg()[0], 2)  # other work on the machine skews figures
    tensors = synthetic_checkpoint(args.params)
    nbytes = sum(t.nbytes for t in tensors)
    methods = {
        "copy": np.copy,
        "bin": lambda t: bin_quantize(t, BITS, threads=args.threads),
        "fixed": lambda t: fixed_point_quantize(t, BITS, threads=args.threads),
    }
    for fn in methods.values():  # warm-up on a slice: imports, allocator, caches
        timed_pass(fn, tensors[:20])
    runs = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            runs[name].append(timed_pass(fn, tensors))
    best = {name: min(seconds) for name, seconds in runs.items()}
    gbps = {name: nbytes / seconds / 1e9 for name, seconds in best.items()}
    ratios = {name: gbps[name] / gbps["copy"] for name in ("bin", "fixed")}
    figures = {
        "params": args.params,
        "tensors": len(tensors),
        "input_bytes": nbytes,
        "bits": BITS,
        "threads": args.threads,
        "best_seconds": {k: round(v, 4) for k, v in best.items()},
        "all_seconds": {k: [round(s, 4) for s in v] for k, v in runs.items()},
        "gb_per_s": {k: round(v, 3) for k, v in gbps.items()},
        "ratio_to_copy": {k: round(v, 3) for k, v in ratios.items()},
    }
    met = {name: ratio >= TARGET_RATIO_TO_COPY for name, ratio in ratios.items()}
    result = {
        "benchmark": "weight-only quantization throughput against a numpy copy "
        f"({args.params} float32 parameters, {len(tensors)} tensors, seed 0)",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "load_average_1min_before": load_before,
        "numpy": np.__version__,
        "target": {"ratio_to_copy_min": TARGET_RATIO_TO_COPY},
        "figures": figures,
        "target_met": met,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
