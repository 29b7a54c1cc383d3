"""Timing a model: `latency_images` images one at a time (the median ms per image at batch
1, with the interquartile range of the runs) and `latency_batches` batches (the median ms
per image batched, with its IQR), after a warm-up; meant to run with nothing else on the
cores (the workflow's timing job), and saying whether anything else did: the load averages
and the runnable threads of the machine just before and after."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from quantflow.evaluate.runners import load_runner


def latency_batch1(runner, x: np.ndarray, count: int, warmup_s: float = 0.2) -> np.ndarray:
    """Milliseconds of each of `count` runs at batch size 1 (one image each), after
    `warmup_s` seconds of untimed runs (a process's first tenths of a second run slower:
    thread pools, caches, clock). `spread` gives their median and quartiles: the median,
    not the mean, so that a few runs the OS delayed (a 0.03 ms model is easily preempted
    for a millisecond) do not decide the figure."""
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
    return 1000.0 * np.asarray(times)


def latency_batched(runner, batches: list[np.ndarray]) -> np.ndarray:
    """Milliseconds per image of each batch (each of the same size, after one untimed
    warm-up run)."""
    inputs = [runner.prepare(x) for x in batches]
    runner.run(inputs[0])
    times = []
    for batch in inputs:
        start = time.perf_counter()
        runner.run(batch)
        times.append((time.perf_counter() - start) / len(batch))
    return 1000.0 * np.asarray(times)


def spread(times) -> tuple[float, list[float]]:
    """(median, [first quartile, third quartile]) of timings; NaN when there are none."""
    if len(times) == 0:
        return float("nan"), [float("nan"), float("nan")]
    q1, median, q3 = np.percentile(np.asarray(times, np.float64), [25, 50, 75])
    return float(median), [float(q1), float(q3)]


def machine_load() -> dict:
    """The machine's load now: the 1- and 5-minute load averages and the threads runnable
    at this instant (from /proc/loadavg; this process's own threads count), the CPU
    seconds every process has used so far (/proc/stat: user, nice, system, irq, softirq,
    steal) and this process's own (os.times), or Nones where the platform does not say."""
    import os

    out = {"load_1min": None, "load_5min": None, "runnable": None, "cpu_seconds": None}
    try:
        fields = Path("/proc/loadavg").read_text().split()
        out.update(
            load_1min=float(fields[0]),
            load_5min=float(fields[1]),
            runnable=int(fields[3].split("/")[0]),
        )
        cpu = Path("/proc/stat").read_text().splitlines()[0].split()
        busy = sum(int(cpu[i]) for i in (1, 2, 3, 6, 7, 8) if i < len(cpu))
        out["cpu_seconds"] = busy / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    own = os.times()
    out["own_cpu_seconds"] = own.user + own.system
    out["time"] = time.perf_counter()
    return out


def other_work_cores(before: dict, after: dict) -> float | None:
    """How many cores' worth of CPU time other processes used between two `machine_load`
    snapshots (all processes' CPU time less this one's, over the wall time), or None."""
    if before.get("cpu_seconds") is None or after.get("cpu_seconds") is None:
        return None
    wall = after["time"] - before["time"]
    if wall <= 0:
        return None
    others = (after["cpu_seconds"] - before["cpu_seconds"]) - (
        after["own_cpu_seconds"] - before["own_cpu_seconds"]
    )
    return max(0.0, others / wall)


def measure_latency(
    path: str | Path,
    split,
    *,
    batch_size: int,
    latency_images: int,
    latency_batches: int,
    threads: int,
) -> dict:
    """Milliseconds per image of one model file: at batch 1, the median (and interquartile
    range) over the first `latency_images` test images run one at a time; batched, the
    same over the first `latency_batches` batches of `batch_size`; each after untimed
    warm-up runs; with the machine's load just before and after. Only the model runs are
    timed."""
    runner = load_runner(path, threads)
    count = min(latency_images, len(split))
    images = min(len(split), batch_size * latency_batches)
    # a short last batch runs padded to full size, as in the evaluation
    batches = [
        split.take(np.resize(np.arange(i, min(i + batch_size, images)), batch_size))
        for i in range(0, images, batch_size)
    ]
    from datetime import datetime, timezone

    measured_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    before = machine_load()
    b1, b1_iqr = spread(latency_batch1(runner, split.take(np.arange(count)), count))
    batched, batched_iqr = spread(latency_batched(runner, batches))
    after = machine_load()
    return {
        "ms_per_image_b1": b1,
        "ms_per_image_b1_iqr": b1_iqr,
        "ms_per_image_batched": batched,
        "ms_per_image_batched_iqr": batched_iqr,
        "load_before": before,
        "load_after": after,
        # other processes' CPU use while timing, in cores (0: nothing else ran)
        "other_work_cores": other_work_cores(before, after),
        "measured_at": measured_at,
        "latency_images": count,
        "latency_batches": len(batches),
        "batch_size": batch_size,
        "threads": threads,
    }
