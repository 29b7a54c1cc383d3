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
    assert latency.machine_load() == {"load_1min": 1.5, "load_5min": 0.75, "runnable": 3}
    fake.write_text("garbage")
    assert latency.machine_load() == {"load_1min": None, "load_5min": None, "runnable": None}


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
