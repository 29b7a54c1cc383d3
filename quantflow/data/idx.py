"""Read and write the IDX format used by MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic (two zero bytes, a dtype code, the number of
dimensions), one big-endian uint32 per dimension, then the payload in C order,
big-endian for multi-byte types. Files may be gzip-compressed.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from quantflow.errors import QuantflowError

GZIP_MAGIC = b"\x1f\x8b"

_CODE_TO_DTYPE: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_NATIVE_TO_CODE: dict[np.dtype, int] = {
    dt.newbyteorder("="): code for code, dt in _CODE_TO_DTYPE.items()
}

_REDOWNLOAD = "delete it and rerun to download it again"


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, raw or gzip-compressed (detected by its magic bytes)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise QuantflowError(f"{path} not found; rerun the workflow to download it") from None
    except OSError as e:
        raise QuantflowError(f"cannot read {path}: {e}") from None
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise QuantflowError(f"{path} is not a valid gzip file ({e}); {_REDOWNLOAD}") from None
    return read_idx_bytes(data, str(path))


def read_idx_bytes(data: bytes, name: str) -> np.ndarray:
    """Parse the (uncompressed) bytes of an IDX file; `name` is used in errors."""
    if len(data) < 4:
        raise QuantflowError(
            f"{name} is not an IDX file: only {len(data)} bytes long; {_REDOWNLOAD}"
        )
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        hint = " (it looks like text, e.g. an HTML error page)" if data[:1] in b"<{" else ""
        raise QuantflowError(
            f"{name} is not an IDX file: bad magic {data[:4].hex(' ')}{hint}, "
            f"the first two bytes must be zero; {_REDOWNLOAD}"
        )
    if code not in _CODE_TO_DTYPE:
        known = ", ".join(f"0x{c:02X}" for c in _CODE_TO_DTYPE)
        raise QuantflowError(
            f"{name} is not an IDX file: unknown dtype code 0x{code:02X} "
            f"(expected one of {known}); {_REDOWNLOAD}"
        )
    if ndim < 1:
        raise QuantflowError(f"{name} is not an IDX file: it declares 0 dimensions; {_REDOWNLOAD}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise QuantflowError(
            f"{name} is truncated: the header needs {header_len} bytes for "
            f"{ndim} dimensions, found {len(data)}; {_REDOWNLOAD}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = _CODE_TO_DTYPE[code]
    expected = math.prod(dims) * dtype.itemsize
    found = len(data) - header_len
    shape = "x".join(str(d) for d in dims)
    if found < expected:
        raise QuantflowError(
            f"{name} is truncated: header says {shape} = {expected} bytes, "
            f"found {found}; {_REDOWNLOAD}"
        )
    if found > expected:
        raise QuantflowError(
            f"{name} has {found - expected} trailing bytes: header says {shape} = "
            f"{expected} bytes, found {found}; {_REDOWNLOAD}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # copy: writable, native order


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write `array` as an uncompressed IDX file (uint8, int8, int16, int32, float32, float64)."""
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _NATIVE_TO_CODE:
        raise QuantflowError(
            f"cannot write {path}: dtype {array.dtype} is not an IDX type; "
            "convert to uint8, int8, int16, int32, float32 or float64"
        )
    if not 1 <= array.ndim <= 255:
        raise QuantflowError(
            f"cannot write {path}: IDX needs 1 to 255 dimensions, got {array.ndim}"
        )
    if any(d >= 2**32 for d in array.shape):
        raise QuantflowError(f"cannot write {path}: a dimension exceeds 2**32-1")
    code = _NATIVE_TO_CODE[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = np.ascontiguousarray(array, dtype=_CODE_TO_DTYPE[code]).tobytes()
    with open(path, "wb") as f:
        f.write(header)
        f.write(payload)
