"""quantflow.formats.safepickle: plain-value pickles (weights.pickle, thresholds.pickle) name no code
and allocate no more than the file holds; numpy pickles (CIFAR-10) build only plain numeric
dtypes and arrays. Hostile files end in one QuantflowError, never a crash: the dangerous
ones are loaded in a subprocess, whose death the test would see."""

from __future__ import annotations

import json
import os
import pickle
import stat
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO
from quantflow.formats.atomic import write_atomic
from quantflow.errors import QuantflowError
from quantflow.formats.safepickle import (
    ARRAY_KEY,
    PLAIN_DTYPES,
    dumps_plain,
    load_plain,
    safe_load,
    save_plain,
    to_plain,
)

# --------------------------------------------------------------------- pickle assembly


def s(text: str) -> bytes:
    """SHORT_BINUNICODE"""
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data


def g(module: str, name: str) -> bytes:
    """GLOBAL"""
    return b"c" + f"{module}\n{name}\n".encode()


def i1(n: int) -> bytes:
    """BININT1"""
    return b"K" + bytes([n])


def by(data: bytes) -> bytes:
    """SHORT_BINBYTES"""
    return b"C" + bytes([len(data)]) + data


def proto4(body: bytes) -> bytes:
    return b"\x80\x04" + body + b"."


def forged_dtype_pickle(dtype_code: str = "V8", field_code: str = "O8") -> bytes:
    """The dtype-forging attack on numpy pickles: numpy.dtype(code) whose BUILD state gives
    it a field of dtype object but flags 0, so numpy believes it holds no objects, and an
    array of it whose raw bytes are a pointer the attacker chose. array.copy() then treats
    the bytes as a PyObject* and crashes (segfaults) the process."""
    object_dtype = g("numpy", "dtype") + s(field_code) + b"\x89\x88\x87R"
    forged = (
        g("numpy", "dtype") + s(dtype_code) + b"\x89\x88\x87R"
        + b"(" + i1(3) + s("|") + b"N" + s("a") + b"\x85"
        + b"}" + s("a") + object_dtype + i1(0) + b"\x86s"
        + i1(8) + i1(1) + i1(0) + b"tb"
    )  # fmt: skip
    array = (
        g("numpy._core.multiarray", "_reconstruct") + g("numpy", "ndarray")
        + i1(0) + b"\x85" + by(b"b") + b"\x87R"
        + b"(" + i1(1) + i1(1) + b"\x85" + forged + b"\x89"
        + by(struct.pack("<Q", 0x4141414141414140)) + b"tb"
    )  # fmt: skip
    return proto4(array)


class Evil:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def run_isolated(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python with the repository importable and at most 4 GiB of
    address space; a crash shows as a negative return code."""
    prelude = textwrap.dedent("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
        sys.path.insert(0, sys.argv[1])
        """)
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code), str(REPO), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------- plain files


def sample_arrays() -> dict:
    rng = np.random.default_rng(0)
    arrays = {name: (rng.random((2, 3)) * 100).astype(name) for name in PLAIN_DTYPES}
    arrays.update(
        scalar=np.array(1.5, np.float32),
        empty=np.zeros((0, 4), np.int16),
        fortran=np.asfortranarray(rng.random((3, 2))),
        strided=np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2],
        big_endian=np.arange(5, dtype=">f4"),
    )
    return arrays


def test_plain_round_trip(tmp_path: Path) -> None:
    arrays = sample_arrays()
    value = {
        "format": 1,
        "arrays": arrays,
        "numbers": [1, -(2**70), 2.5, float("inf"), True, None],
        "pair": (1, "two"),
        "blob": b"\x00\xff",
        "numpy_scalars": [np.float32(0.25), np.int64(3), np.bool_(True)],
        7: "int key",
    }
    path = tmp_path / "value.pickle"
    save_plain(value, path)
    loaded = load_plain(path, what="test file", rerun="test")
    assert loaded["numbers"] == value["numbers"] and loaded["pair"] == (1, "two")
    assert loaded["blob"] == b"\x00\xff" and loaded[7] == "int key"
    assert loaded["numpy_scalars"] == [0.25, 3, True]
    assert [type(v) for v in loaded["numpy_scalars"]] == [float, int, bool]
    for name, array in arrays.items():
        got = loaded["arrays"][name]
        assert got.shape == array.shape and got.dtype == array.dtype.newbyteorder("=")
        assert np.array_equal(got, array) and got.flags.writeable and got.flags.c_contiguous
    assert [p.name for p in tmp_path.iterdir()] == ["value.pickle"]


def test_the_file_holds_plain_values_only(tmp_path: Path) -> None:
    """Plain pickle.loads of a file (trusted here, we wrote it) shows no numpy object."""
    blob = dumps_plain({"a": np.arange(3, dtype=np.uint8)})
    assert b"numpy" not in blob
    assert pickle.loads(blob) == {"a": {ARRAY_KEY: "uint8", "shape": [3], "data": b"\0\1\2"}}


@pytest.mark.parametrize(
    "value, match",
    [
        ({"x": np.zeros(2, np.complex64)}, "dtype complex64"),
        ({"x": np.array([object()])}, "dtype object"),
        ({"x": np.zeros(2, [("a", "f4")])}, "dtype"),
        ({"x": {1, 2}}, "set is not a plain value"),
        ({"x": Evil("true")}, "Evil is not a plain value"),
        ({ARRAY_KEY: "float32"}, "reserved"),
        ({("a", 1): 2}, "key"),
    ],
)
def test_only_plain_values_are_saved(value, match: str) -> None:
    with pytest.raises(QuantflowError, match=match):
        to_plain(value)


def load_blob(tmp_path: Path, blob: bytes, name: str = "f.pickle"):
    path = tmp_path / name
    path.write_bytes(blob)
    return load_plain(path, what="weights file", rerun="extract_weights")


def test_os_system_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for protocol in (0, 2, 5):
        blob = pickle.dumps({"x": [Evil(f"touch {marker}")]}, protocol=protocol)
        with pytest.raises(QuantflowError) as info:
            load_blob(tmp_path, blob)
        message = str(info.value)
        assert f"'{os.system.__module__}.system'" in message
        assert "nothing was executed" in message and "--forcerun extract_weights" in message
        assert "extract_weights" in message
    assert not marker.exists()


def test_forged_dtype_is_refused_and_never_crashes(tmp_path: Path) -> None:
    """The crafted numpy pickle that forges an object field (segfault in copy()) is
    refused by both loaders; run in a subprocess, so a crash would fail the test."""
    path = tmp_path / "forged.pickle"
    path.write_bytes(forged_dtype_pickle())
    plain_ok = tmp_path / "plain-dtype-forged.pickle"
    plain_ok.write_bytes(forged_dtype_pickle("f4", "f8"))  # plain dtype names, forged state
    proc = run_isolated(
        """
        from quantflow.errors import QuantflowError
        from quantflow.formats.safepickle import load_plain, safe_load
        for path in sys.argv[2:]:
            for load in (load_plain, safe_load):
                try:
                    result = load(path)
                    result.copy()
                    print("LOADED", load.__name__)
                except QuantflowError as e:
                    print("REFUSED", load.__name__, e)
        """,
        str(path),
        str(plain_ok),
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4 and all(line.startswith("REFUSED") for line in lines), lines
    assert "old format" in lines[0] and "numpy.dtype" in lines[0]
    assert "'V8' is not a plain numeric dtype" in lines[1]
    assert "dtype state other than a plain byte order" in lines[3]


@pytest.mark.parametrize(
    "record, match",
    [
        ({ARRAY_KEY: "float32", "shape": [10**6, 10**6], "data": b"\0" * 4}, "needs 4000000"),
        ({ARRAY_KEY: "float32", "shape": [3], "data": b"\0" * 11}, "needs 12 bytes"),
        ({ARRAY_KEY: "float32", "shape": [3], "data": b"\0" * 13}, "needs 12 bytes"),
        ({ARRAY_KEY: "object", "shape": [1], "data": b"\0" * 8}, "dtype 'object'"),
        ({ARRAY_KEY: "V8", "shape": [1], "data": b"\0" * 8}, "dtype 'V8'"),
        ({ARRAY_KEY: "<f4", "shape": [1], "data": b"\0" * 4}, "dtype '<f4'"),
        ({ARRAY_KEY: 5, "shape": [1], "data": b"\0" * 4}, "dtype 5"),
        ({ARRAY_KEY: "int8", "shape": [-1], "data": b""}, "shape"),
        ({ARRAY_KEY: "int8", "shape": [True], "data": b"\0"}, "shape"),
        ({ARRAY_KEY: "int8", "shape": [2**70, 0], "data": b""}, "shape"),
        ({ARRAY_KEY: "int8", "shape": [1] * 40, "data": b"\0"}, "shape"),
        ({ARRAY_KEY: "int8", "shape": "1", "data": b"\0"}, "shape"),
        ({ARRAY_KEY: "int8", "shape": [1], "data": "x"}, "data is a str"),
        ({ARRAY_KEY: "int8", "shape": [1], "data": b"\0", "extra": 1}, "keys"),
    ],
)
def test_bad_array_records_are_refused(tmp_path: Path, record: dict, match: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(QuantflowError, match="corrupt or truncated") as info:
            load_blob(tmp_path, pickle.dumps({"layers": [record]}, protocol=4))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert match in str(info.value)
    assert peak < 1 << 20  # no allocation of what the record claims


def test_arrays_sharing_one_bytes_object_cannot_multiply_memory(tmp_path: Path) -> None:
    data = b"\0" * 4000
    records = [{ARRAY_KEY: "float32", "shape": [1000], "data": data} for _ in range(50)]
    blob = pickle.dumps(records, protocol=4)  # the bytes are stored once, referenced 50x
    assert len(blob) < 8000
    with pytest.raises(QuantflowError, match="more bytes than the file"):
        load_blob(tmp_path, blob)


@pytest.mark.parametrize(
    "blob, match",
    [
        # BINBYTES8 declaring 1 TiB in a 20-byte file: nothing is allocated
        (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc.", "bytes"),
        # BINUNICODE8 likewise
        (b"\x80\x04\x8d" + struct.pack("<Q", 1 << 40) + b"abc.", "bytes"),
        # a memo index of 2^31 (CPython would size its memo table to it)
        (proto4(b"]r" + struct.pack("<I", 1 << 31)), "memo index"),
        (proto4(b"]h\x05"), "never stored"),
        # a frame longer than the file
        (b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"]\x94.", "frame"),
        (proto4(b"]\x94") + b"trailing", "after the end"),
        (proto4(b"\x8f\x94(K\x01\x90"), "opcode EMPTY_SET"),
        (proto4(b"\x96" + struct.pack("<Q", 2) + b"ab"), "opcode BYTEARRAY8"),
        (b"\x80\x02U\x03abc.", "opcode SHORT_BINSTRING"),
        (proto4(b"\x97"), "opcode NEXT_BUFFER"),
        (proto4(b"]\x94h\x00a"), "nested"),  # a list that contains itself
        (proto4(b"(" * 100 + b"]" + b"l" * 100), "nested"),
        (b"\x80\x04", "truncated"),
        (b"", "truncated"),
        (b"\x80\x05\x95this is not a pickle at all", "corrupt"),
    ],
)
def test_hostile_opcode_streams_are_refused(tmp_path: Path, blob: bytes, match: str) -> None:
    with pytest.raises(QuantflowError, match="corrupt or truncated|more than plain") as info:
        load_blob(tmp_path, blob)
    assert match in str(info.value)


def test_every_truncation_is_refused(tmp_path: Path) -> None:
    blob = dumps_plain({"layers": {"d": {"kernel": np.ones((3, 2), np.float32)}}, "n": [1.5]})
    for cut in range(len(blob)):
        with pytest.raises(QuantflowError, match="corrupt or truncated"):
            load_blob(tmp_path, blob[:cut])


def test_old_numpy_pickles_ask_to_rerun_the_rule(tmp_path: Path) -> None:
    old = {"format": "quantflow-weights/1", "layers": {"d": {"kernel": np.ones(3, np.float32)}}}
    for protocol in (2, 4, 5):
        with pytest.raises(QuantflowError, match="old format") as info:
            load_blob(tmp_path, pickle.dumps(old, protocol=protocol))
        assert "snakemake --cores all --forcerun extract_weights" in str(info.value)


def test_missing_file_and_file_objects(tmp_path: Path) -> None:
    with pytest.raises(QuantflowError, match="cannot read weights file"):
        load_plain(tmp_path / "missing.pickle", what="weights file")
    import io

    assert load_plain(io.BytesIO(dumps_plain([1, np.int8(2)]))) == [1, 2]


# --------------------------------------------------------------------- numpy pickles


@pytest.mark.parametrize(
    "blob, match",
    [
        # _reconstruct asked for a huge array outright
        (
            proto4(
                g("numpy._core.multiarray", "_reconstruct") + g("numpy", "ndarray")
                + b"J\xff\xff\xff\x7f\x85" + by(b"b") + b"\x87R"
            ),
            "_reconstruct is only allowed",
        ),  # fmt: skip
        # an array state whose shape claims far more than its bytes
        (
            proto4(
                g("numpy._core.multiarray", "_reconstruct") + g("numpy", "ndarray")
                + i1(0) + b"\x85" + by(b"b") + b"\x87R"
                + b"(" + i1(1) + b"J\xff\xff\xff\x7fJ\xff\xff\xff\x7f\x86"
                + g("numpy", "dtype") + s("f8") + b"\x89\x88\x87R"
                + b"\x89" + by(b"12345678") + b"tb"
            ),
            "does not match its shape",
        ),  # fmt: skip
        (proto4(g("numpy", "dtype") + s("O8") + b"\x89\x88\x87R"), "'O8' is not a plain"),
        (proto4(g("numpy", "ndarray") + i1(9) + b"\x85\x81"), "not a type"),  # NEWOBJ
        (proto4(g("numpy.dtypes", "Float32DType") + b")R"), "'numpy.dtypes.Float32DType'"),
        (proto4(g("collections", "OrderedDict") + b")R}b"), "BUILD of a OrderedDict"),
    ],
)
def test_numpy_pickles_build_only_plain_arrays(blob: bytes, match: str) -> None:
    import io

    with pytest.raises(QuantflowError) as info:
        safe_load(io.BytesIO(blob), what="CIFAR-10 batch")
    assert match in str(info.value)


# --------------------------------------------------------------------- fuzzing

FUZZ_LOADER = """
import json, tracemalloc
import numpy as np
from quantflow.errors import QuantflowError
from quantflow.formats.safepickle import load_plain, safe_load

def touch(value, depth=0):
    # use everything that was loaded: copy every array (the forged-dtype crash site)
    if depth > 40:
        return
    if isinstance(value, np.ndarray):
        value.copy().sum()
    elif isinstance(value, dict):
        for k, v in value.items():
            touch(k, depth + 1); touch(v, depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            touch(v, depth + 1)

for line in sys.stdin:
    kind, path = line.split()
    load = load_plain if kind == "plain" else safe_load
    size = os.path.getsize(path)
    tracemalloc.start()
    try:
        touch(load(path))
        outcome = "ok"
    except QuantflowError as e:
        outcome = "quantflow: " + str(e)
    except BaseException as e:
        outcome = "OTHER " + type(e).__name__ + ": " + str(e)[:200]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({"path": path, "outcome": outcome, "peak": peak, "size": size}), flush=True)
"""


def fuzz_seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(5)
    weights = {
        "format": "quantflow-weights/1",
        "metadata": {"architecture": '{"class_name": "Sequential"}', "trainable": {"d/k": True}},
        "layers": {
            "conv": {"kernel": rng.random((3, 3, 1, 2)).astype(np.float32)},
            "bn": {"gamma": np.ones(2, np.float32), "moving_mean": np.zeros(2, np.float16)},
            "ids": {"values": np.arange(4, dtype=np.int64), "mask": np.array([True, False])},
        },
    }
    thresholds = {
        "format": 1,
        "scheme": "w4a8-sym-pc",
        "trained": {"conv/kernel": {"kind": "weight", "bits": 4, "alpha": [0.5, 1.0]}},
    }
    cifar = {
        b"data": rng.integers(0, 255, (2, 12), dtype=np.uint8),
        b"labels": [1, 2],
        b"scalar": np.float32(1.5),
        b"dtype": np.dtype("<i4"),
    }
    return {
        "plain-weights": dumps_plain(weights),
        "plain-thresholds": dumps_plain(thresholds),
        "numpy-p2": pickle.dumps(cifar, protocol=2),
        "numpy-p5": pickle.dumps(cifar, protocol=5),
    }


def mutate(blob: bytes, edits: list[tuple[int, int, int, bytes]]) -> bytes:
    data = bytearray(blob)
    for kind, position, length, payload in edits:
        if not data:
            data.extend(payload)
            continue
        at = position % len(data)
        if kind == 0:  # flip bits of one byte
            data[at] ^= payload[0] or 0x80
        elif kind == 1:  # insert bytes
            data[at:at] = payload
        elif kind == 2:  # delete a run
            del data[at : at + length]
        else:  # overwrite with boundary values
            data[at : at + len(payload)] = bytes(
                b if b in (0, 0x7F, 0xFF) else 0x80 for b in payload
            )
    return bytes(data)


EDITS = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.integers(0, 10**6),
        st.integers(1, 16),
        st.binary(min_size=1, max_size=9),
    ),
    min_size=1,
    max_size=4,
)


def test_mutated_files_load_or_fail_clearly(tmp_path: Path) -> None:
    """200 random mutations of valid files (flipped, inserted, deleted, overwritten
    bytes), each loaded in one shared subprocess: every load either succeeds or ends in a
    QuantflowError, never another exception or a crash, and never needs much more memory
    than the file holds."""
    seeds = fuzz_seeds()
    names = sorted(seeds)
    cases: list[tuple[str, Path]] = []

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(seed=st.sampled_from(names), edits=EDITS)
    def collect(seed: str, edits) -> None:
        path = tmp_path / f"case{len(cases):04d}-{seed}.pickle"
        path.write_bytes(mutate(seeds[seed], edits))
        cases.append(("plain" if seed.startswith("plain") else "numpy", path))

    collect()
    for name in names:  # the unmutated seeds load
        path = tmp_path / f"seed-{name}.pickle"
        path.write_bytes(seeds[name])
        cases.append(("plain" if name.startswith("plain") else "numpy", path))
    assert len(cases) >= 200
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys\nsys.path.insert(0, sys.argv[1])\n" + FUZZ_LOADER,
            str(REPO),
        ],
        input="".join(f"{kind} {path}\n" for kind, path in cases),
        capture_output=True,
        text=True,
        timeout=120,
    )
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    done = {r["path"] for r in results}
    crashed = next((str(p) for _, p in cases if str(p) not in done), None)
    assert proc.returncode == 0 and len(results) == len(cases), (
        f"the loader process died (return code {proc.returncode}) at {crashed}: "
        f"{proc.stderr[-2000:]}"
    )
    bad = [
        r for r in results if not (r["outcome"] == "ok" or r["outcome"].startswith("quantflow: "))
    ]
    assert not bad, bad[:5]
    hungry = [r for r in results if r["peak"] > 4 * r["size"] + (1 << 20)]
    assert not hungry, hungry[:5]
    assert all(r["outcome"] == "ok" for r in results if "seed-" in r["path"])
    assert sum(r["outcome"] == "ok" for r in results) < len(results)  # mutations do bite


# --------------------------------------------------------------------- atomic writes


def test_write_atomic_replaces_and_cleans_up(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "model.tflite"
    path.write_bytes(b"old")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        write_atomic(path, b"newer")
    assert path.read_bytes() == b"new"  # the old file is intact, no temporary is left
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]
