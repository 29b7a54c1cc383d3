"""Load pickles of numpy data without running arbitrary code.

A pickle names the callables that rebuild its objects ("module.name" globals) and the
unpickler calls them: a crafted file can name `os.system`. `safe_load` resolves only
the few globals numpy needs to rebuild arrays, dtypes and scalars (plus
collections.OrderedDict); any other global is refused before it is imported or called.
Plain containers (dict, list, tuple, str, bytes, int, float, bool, None) need no global.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from quantflow.errors import QuantflowError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

_LATIN1 = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"}


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as Python 3 protocol-2 pickles use it for bytes: latin-1 only."""
    if not isinstance(text, str) or str(encoding).lower() not in _LATIN1 or errors != "strict":
        raise pickle.UnpicklingError(
            f"_codecs.encode is only allowed as encode(str, 'latin1'), got encoding {encoding!r}"
        )
    return text.encode("latin1")


def _allowed_globals() -> dict[str, Callable[..., Any] | type]:
    """The "module.name" globals a numpy pickle may reference, mapped to what they mean.

    Pickles written with numpy 1.x say `numpy.core`, numpy 2.x says `numpy._core`; both
    map to the installed numpy's objects, so neither deprecated module gets imported.
    """
    allowed: dict[str, Callable[..., Any] | type] = {
        "numpy.ndarray": np.ndarray,
        "numpy.dtype": np.dtype,
        "collections.OrderedDict": collections.OrderedDict,
        "_codecs.encode": _latin1_encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[f"{package}.multiarray._reconstruct"] = _multiarray._reconstruct
        allowed[f"{package}.multiarray.scalar"] = _multiarray.scalar
        if hasattr(_numeric, "_frombuffer"):  # protocol-5 arrays (numpy >= 1.16)
            allowed[f"{package}.numeric._frombuffer"] = _numeric._frombuffer
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25
    for name in dir(dtypes) if dtypes is not None else ():
        value = getattr(dtypes, name)  # numpy.dtypes.Float32DType etc., should a pickle name them
        if isinstance(value, type) and issubclass(value, np.dtype):
            allowed[f"numpy.dtypes.{name}"] = value
    return allowed


ALLOWED_GLOBALS = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose find_class knows only ALLOWED_GLOBALS."""

    def __init__(self, file: BinaryIO, *, encoding: str, source: str) -> None:
        super().__init__(file, encoding=encoding, fix_imports=True)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        try:
            return ALLOWED_GLOBALS[qualified]
        except KeyError:
            raise QuantflowError(
                f"{self._source} refers to the Python global {qualified!r}, which a data file "
                "has no need for (only numpy arrays, dtypes, scalars, plain containers and "
                "collections.OrderedDict are loaded); it was NOT executed. The file may have "
                "been tampered with: delete it and download it again from a trusted source"
            ) from None


def safe_load(
    fileobj_or_path: str | os.PathLike[str] | BinaryIO,
    *,
    encoding: str = "ASCII",
    what: str = "file",
) -> object:
    """Unpickle numpy data from a path or binary file object, refusing any other code.

    `encoding` decodes Python 2 strings as pickle.load does: "bytes" keeps them as bytes
    (as the CIFAR-10 python batches need), "latin1" decodes them. `what` names the data
    in error messages ("CIFAR-10 batch"); a path (or file object's name) is added to it.
    Raises QuantflowError for a missing, truncated or corrupt file or a forbidden global.
    """
    if isinstance(fileobj_or_path, (str, os.PathLike)):
        path = Path(fileobj_or_path)
        source = f"{what} {path}"
        try:
            with open(path, "rb") as handle:
                return _load(handle, encoding, source)
        except OSError as e:
            raise QuantflowError(f"cannot read {source}: {e.strerror or e}") from None
    name = getattr(fileobj_or_path, "name", None)
    source = f"{what} {name}" if isinstance(name, (str, bytes)) and name else what
    return _load(fileobj_or_path, encoding, source)


def _load(handle: BinaryIO, encoding: str, source: str) -> object:
    """Run the restricted unpickler; turn every kind of bad data into QuantflowError."""
    try:
        return _RestrictedUnpickler(handle, encoding=encoding, source=source).load()
    except QuantflowError:
        raise
    except EOFError:
        reason = "it ends too early (truncated)"
    except (
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        UnicodeDecodeError,
        OverflowError,
        MemoryError,
        zlib.error,
        io.UnsupportedOperation,
    ) as e:
        reason = f"{type(e).__name__}: {e}"
    raise QuantflowError(
        f"{source} is corrupt or truncated: not a valid pickle of numpy data ({reason}); "
        "delete it and download, extract or create it again"
    )
