"""Timing a model: `latency_images` images one at a time (the median ms per image at batch
1) and `latency_batches` batches (the median ms per image batched), after a warm-up; meant
to run with nothing else on the cores (the workflow's timing job)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from quantflow.evaluate.runners import load_runner


def latency_batch1(runner, x: np.ndarray, count: int, warmup_s: float = 0.2) -> float:
    """Median milliseconds per image at batch size 1 over `count` images, each run timed
    on its own, after `warmup_s` seconds of untimed runs (a process's first tenths of a
    second run slower: thread pools, caches, clock). The median, not the mean, so that a
    few runs the OS delayed (a 0.03 ms model is easily preempted for a millisecond) do not
    decide the figure."""
    inputs = runner.prepare(x[: max(count, 1)])
    end = time.perf_counter() + warmup_s
    i = 0
    while time.perf_counter() < end or i < 10:
        runner.run(inputs[i % len(inputs) : i % len(inputs) + 1])
        i += 1
    times = []
    for i in range(min(count, len(inputs))):
        start = time.perf_counter()
        runner.run(inputs[i : i + 1])
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times)) if times else float("nan")


def latency_batched(runner, batches: list[np.ndarray]) -> float:
    """Median over the batches (each of the same size, after one untimed warm-up run) of
    milliseconds per image."""
    inputs = [runner.prepare(x) for x in batches]
    runner.run(inputs[0])
    times = []
    for batch in inputs:
        start = time.perf_counter()
        runner.run(batch)
        times.append((time.perf_counter() - start) / len(batch))
    return 1000.0 * float(np.median(times))


def measure_latency(
    path: str | Path,
    split,
    *,
    batch_size: int,
    latency_images: int,
    latency_batches: int,
    threads: int,
) -> dict:
    """Milliseconds per image of one model file: at batch 1, the median over the first
    `latency_images` test images run one at a time; batched, the median over the first
    `latency_batches` batches of `batch_size`; each after untimed warm-up runs. Only the
    model runs are timed."""
    runner = load_runner(path, threads)
    count = min(latency_images, len(split))
    images = min(len(split), batch_size * latency_batches)
    # a short last batch runs padded to full size, as in the evaluation
    batches = [
        split.take(np.resize(np.arange(i, min(i + batch_size, images)), batch_size))
        for i in range(0, images, batch_size)
    ]
    return {
        "ms_per_image_b1": latency_batch1(runner, split.take(np.arange(count)), count),
        "ms_per_image_batched": latency_batched(runner, batches),
        "latency_images": count,
        "latency_batches": len(batches),
        "batch_size": batch_size,
        "threads": threads,
    }
