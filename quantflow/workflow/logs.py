"""Step logging: send everything a step prints (Python and TensorFlow's C++ logs) to its
log file, and turn user errors into one clear line instead of a traceback."""

from __future__ import annotations

import os
import sys
import traceback

from quantflow.errors import QuantflowError


def run_logged(log_path: str, main, *args, **kwargs):
    """Run `main(*args, **kwargs)` with stdout and stderr (file descriptors 1 and 2 too)
    appended to `log_path`. A QuantflowError is written to the log and to the original
    stderr as `quantflow: <message>`, and the process exits with status 1.

    Whatever happens, sys.stdout, sys.stderr and descriptors 1 and 2 are what they were
    before once it returns (or raises), and the log is closed. `log_path` None: the output
    stays where it goes, errors are handled the same way."""
    if log_path is None:
        return _run_reporting(main, args, kwargs, sys.stdout, 2, "stdout")
    saved_streams = sys.stdout, sys.stderr
    for stream in saved_streams:
        _flush(stream)
    saved_fds = os.dup(1), os.dup(2)
    original_stderr = saved_fds[1]
    try:
        with open(log_path, "a", buffering=1) as log:
            try:
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                sys.stdout = sys.stderr = log
                return _run_reporting(main, args, kwargs, log, original_stderr, log_path)
            finally:
                _flush(log)
                sys.stdout, sys.stderr = saved_streams
                os.dup2(saved_fds[0], 1)
                os.dup2(saved_fds[1], 2)
    finally:
        os.close(saved_fds[0])
        os.close(saved_fds[1])


def _run_reporting(main, args, kwargs, log, original_stderr: int, log_name: str):
    """main(*args, **kwargs); a QuantflowError as one line in `log` and on the original
    stderr (then exit status 1), any other error's traceback in `log`."""
    try:
        return main(*args, **kwargs)
    except QuantflowError as e:
        print(f"ERROR: {e}", file=log, flush=True)
        os.write(original_stderr, f"quantflow: {e}\n(log: {log_name})\n".encode())
        sys.exit(1)
    except Exception:
        traceback.print_exc(file=log)
        os.write(original_stderr, f"quantflow: unexpected error, see {log_name}\n".encode())
        raise


def _flush(stream) -> None:
    try:
        stream.flush()
    except (AttributeError, OSError, ValueError):  # closed or not a real stream
        pass
