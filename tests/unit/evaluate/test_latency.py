"""quantflow.evaluate.latency: the median and interquartile range of the timed runs, and the
machine's load read from /proc/loadavg."""

import numpy as np
import pytest

from quantflow.evaluate import latency


def test_spread_is_the_median_and_quartiles():
    median, (q1, q3) = latency.spread([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (median, q1, q3) == (3.0, 2.0, 4.0)
    median, iqr = latency.spread([])
    assert np.isnan(median) and all(np.isnan(v) for v in iqr)


def test_machine_load_reads_loadavg(monkeypatch, tmp_path):
    fake = tmp_path / "loadavg"
    fake.write_text("1.50 0.75 0.30 3/412 98765\n")
    real = latency.Path

    monkeypatch.setattr(latency, "Path", lambda p: real(fake) if p == "/proc/loadavg" else real(p))
    load = latency.machine_load()
    assert (load["load_1min"], load["load_5min"], load["runnable"]) == (1.5, 0.75, 3)
    assert load["cpu_seconds"] > 0 and load["own_cpu_seconds"] > 0
    fake.write_text("garbage")
    assert latency.machine_load()["load_1min"] is None


def test_other_work_is_the_cpu_time_of_other_processes():
    """All processes used 3 CPU seconds in 2 s of wall time, this one 1: the others used
    one core's worth."""
    before = {"cpu_seconds": 10.0, "own_cpu_seconds": 1.0, "time": 100.0}
    after = {"cpu_seconds": 13.0, "own_cpu_seconds": 2.0, "time": 102.0}
    assert latency.other_work_cores(before, after) == 1.0
    assert latency.other_work_cores({**before, "cpu_seconds": None}, after) is None
    # a busy loop here, nothing else: close to no other work (what this machine runs aside)
    start = latency.machine_load()
    _Sleeper(200).run(None)
    assert latency.other_work_cores(start, latency.machine_load()) < 1.0


class _Sleeper:
    """A runner whose every run takes about `ms` milliseconds."""

    def __init__(self, ms):
        self.ms = ms

    def prepare(self, x):
        return x

    def run(self, x):
        import time

        end = time.perf_counter() + self.ms / 1000
        while time.perf_counter() < end:
            pass


def test_batch1_runs_are_timed_one_by_one():
    times = latency.latency_batch1(_Sleeper(0.5), np.zeros((20, 2)), 20, warmup_s=0.0)
    assert times.shape == (20,)
    median, (q1, q3) = latency.spread(times)
    assert 0.5 <= q1 <= median <= q3 and median == pytest.approx(0.5, abs=0.4)
