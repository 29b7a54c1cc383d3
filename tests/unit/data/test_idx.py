"""Tests for quantflow.data.idx: round trips and every way an IDX file can be broken."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from quantflow.errors import QuantflowError
from quantflow.data.idx import read_idx, read_idx_bytes, write_idx


@pytest.fixture
def images() -> np.ndarray:
    """A small 3-d uint8 array shaped like an MNIST image file."""
    return np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)


def test_uint8_round_trip_raw(tmp_path: Path, images: np.ndarray) -> None:
    path = tmp_path / "images-idx3-ubyte"
    write_idx(path, images)
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 3])
    assert struct.unpack(">3I", raw[4:16]) == (5, 7, 3)
    back = read_idx(path)
    assert back.dtype == np.uint8
    assert back.shape == (5, 7, 3)
    np.testing.assert_array_equal(back, images)
    back[0, 0, 0] = 42  # the result is a writable copy


def test_uint8_round_trip_gzipped_by_magic_not_extension(
    tmp_path: Path, images: np.ndarray
) -> None:
    raw_path = tmp_path / "images-idx3-ubyte"
    write_idx(raw_path, images)
    gz_path = tmp_path / "no-gz-extension"
    gz_path.write_bytes(gzip.compress(raw_path.read_bytes()))
    np.testing.assert_array_equal(read_idx(gz_path), images)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_all_dtypes_round_trip_in_native_order(tmp_path: Path, dtype: type) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    path = tmp_path / "a.idx"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype)
    assert back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_multibyte_payload_is_big_endian(tmp_path: Path) -> None:
    path = tmp_path / "labels.idx"
    write_idx(path, np.array([1, 258], dtype=np.int32))
    assert path.read_bytes() == bytes([0, 0, 0x0C, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 1, 2])


def test_truncated_file(tmp_path: Path, images: np.ndarray) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, images)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(QuantflowError) as err:
        read_idx(path)
    message = str(err.value)
    assert str(path) in message
    assert "truncated" in message
    assert "5x7x3 = 105 bytes, found 95" in message
    assert "delete it" in message


def test_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(bytes([0, 0, 0x08, 3, 0, 0, 0, 5]))
    with pytest.raises(QuantflowError, match="truncated") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_trailing_bytes(tmp_path: Path, images: np.ndarray) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte"
    write_idx(path, images)
    path.write_bytes(path.read_bytes() + b"\0\0\0")
    with pytest.raises(QuantflowError) as err:
        read_idx(path)
    message = str(err.value)
    assert str(path) in message
    assert "3 trailing bytes" in message


def test_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "error-page"
    path.write_bytes(b"<html><body>404 Not Found</body></html>")
    with pytest.raises(QuantflowError) as err:
        read_idx(path)
    message = str(err.value)
    assert str(path) in message
    assert "bad magic" in message


def test_unknown_dtype_code(tmp_path: Path) -> None:
    path = tmp_path / "weird"
    path.write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 9]))
    with pytest.raises(QuantflowError, match="dtype code 0x07") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_zero_dimensions_refused() -> None:
    with pytest.raises(QuantflowError, match="0 dimensions"):
        read_idx_bytes(bytes([0, 0, 0x08, 0, 1]), "scalar.idx")


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_corrupt_gzip(tmp_path: Path, images: np.ndarray, damage: str) -> None:
    raw_path = tmp_path / "raw"
    write_idx(raw_path, images)
    compressed = bytearray(gzip.compress(raw_path.read_bytes()))
    if damage == "truncated":
        compressed = compressed[: len(compressed) // 2]
    else:
        compressed[len(compressed) // 2] ^= 0xFF
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(bytes(compressed))
    with pytest.raises(QuantflowError) as err:
        read_idx(path)
    message = str(err.value)
    assert str(path) in message
    assert "gzip" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(QuantflowError, match="not found") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_write_refuses_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(QuantflowError, match="uint8"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))
