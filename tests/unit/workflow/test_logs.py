"""quantflow.workflow.logs.run_logged: a step's output goes to its log, and afterwards sys.stdout,
sys.stderr and file descriptors 1 and 2 are the ones from before, whatever happened."""

import os
import sys

import pytest

from quantflow.errors import QuantflowError
from quantflow.workflow.logs import run_logged


def _state():
    return sys.stdout, sys.stderr, os.fstat(1).st_ino, os.fstat(2).st_ino


def ok(x):
    print("to stdout", x)
    print("to stderr", file=sys.stderr)
    os.write(1, b"to fd 1\n")
    os.write(2, b"to fd 2\n")
    return x * 2


def user_error():
    print("working")
    raise QuantflowError("the config is wrong")


def crash():
    raise RuntimeError("boom")


def test_output_goes_to_the_log_and_streams_are_restored(tmp_path):
    log = tmp_path / "step.log"
    before = _state()
    assert run_logged(str(log), ok, 21) == 42
    assert _state() == before
    assert not sys.stdout.closed and not sys.stderr.closed
    print("after the step")  # would raise 'I/O operation on closed file' before the fix
    text = log.read_text()
    for line in ("to stdout 21", "to stderr", "to fd 1", "to fd 2"):
        assert line in text
    assert "after the step" not in text


def test_user_error_exits_1_and_restores_streams(tmp_path, capfd):
    log = tmp_path / "step.log"
    before = _state()
    with pytest.raises(SystemExit) as info:
        run_logged(str(log), user_error)
    assert info.value.code == 1
    assert _state() == before
    print("still printing")
    out, err = capfd.readouterr()
    assert "quantflow: the config is wrong" in err and "still printing" in out
    assert "ERROR: the config is wrong" in log.read_text()


def test_unexpected_error_is_logged_reraised_and_streams_restored(tmp_path, capfd):
    log = tmp_path / "step.log"
    before = _state()
    with pytest.raises(RuntimeError, match="boom"):
        run_logged(str(log), crash)
    assert _state() == before
    assert "RuntimeError: boom" in log.read_text()
    assert f"quantflow: unexpected error, see {log}" in capfd.readouterr().err


def test_no_descriptor_is_leaked(tmp_path):
    def count():
        return len(os.listdir("/proc/self/fd"))

    run_logged(str(tmp_path / "a.log"), ok, 1)
    before = count()
    for _ in range(5):
        run_logged(str(tmp_path / "a.log"), ok, 1)
    assert count() == before
