"""Pickles that cannot run code or allocate more memory than the file holds.

A pickle names the callables that rebuild its objects ("module.name" globals) and the
unpickler calls them: a crafted file can name `os.system`, and even numpy's own array
machinery can be abused (a forged dtype that hides an object field crashes the process
when the array is copied; a reconstructed array can ask for any size). So:

**quantflow's own files** (weights.pickle, thresholds.pickle) hold plain Python values
only: dict, list, tuple, str, int, float, bool, None and bytes. A numpy array is written
as a record ``{"__ndarray__": dtype name, "shape": [ints], "data": bytes}`` (dtype one of
`PLAIN_DTYPES`, data little-endian, C order). :func:`save_plain` writes them,
:func:`load_plain` reads them: it checks every opcode first (no global, no call, no
buffer; every length and memo index within the file), unpickles with an unpickler whose
`find_class` always refuses, and rebuilds each array only after checking its dtype name
against the allow-list and its byte length against shape x item size. All arrays together
may not hold more bytes than the file, so a file allocates no more than about its size.

**numpy pickles from elsewhere** (the CIFAR-10 python batches) are read by
:func:`safe_load`: a pure-Python unpickler that knows only the few numpy globals those
files use, each wrapped so that it builds only plain numeric dtypes (a copy, never a
shared builtin), only empty arrays to be filled by their state (length checked), and
whose BUILD step accepts only the state numpy writes for a plain numeric dtype or array.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import pickletools
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from quantflow.errors import QuantflowError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

#: The dtypes an array may have (quantflow's files and numpy pickles alike).
PLAIN_DTYPES = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
)
ARRAY_KEY = "__ndarray__"
PICKLE_PROTOCOL = 4
MAX_DEPTH = 32  # nesting of containers in a plain file
MAX_NDIM = 32

_PLAIN_TYPES = (dict, list, tuple, str, int, float, bool, type(None), bytes)

# --------------------------------------------------------------------------- writing


def to_plain(obj: object, where: str = "value") -> object:
    """`obj` with every numpy array turned into an array record and every numpy scalar
    into a Python number; anything but plain values, arrays and numpy scalars (of
    `PLAIN_DTYPES`) is refused with a QuantflowError naming where it is."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj if type(obj) in _PLAIN_TYPES else _plain_scalar(obj, where)
    if isinstance(obj, np.ndarray):
        return _array_record(obj, where)
    if isinstance(obj, np.generic):
        return _plain_scalar(obj, where)
    if isinstance(obj, dict):
        if ARRAY_KEY in obj:
            raise QuantflowError(f"cannot save {where}: the key {ARRAY_KEY!r} is reserved")
        out = {}
        for key, value in obj.items():
            if not isinstance(key, (str, int, float, bool, type(None), bytes)):
                raise QuantflowError(
                    f"cannot save {where}: key {key!r} is a {type(key).__name__}; "
                    "only str, numbers, None and bytes are allowed as keys"
                )
            out[_plain_scalar(key, where) if isinstance(key, np.generic) else key] = to_plain(
                value, f"{where}[{key!r}]"
            )
        return out
    if isinstance(obj, (list, tuple)):
        items = [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return tuple(items) if isinstance(obj, tuple) else items
    raise QuantflowError(
        f"cannot save {where}: a {type(obj).__name__} is not a plain value (dict, list, "
        "tuple, str, int, float, bool, None, bytes) or a numpy array"
    )


def _plain_scalar(value, where: str):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and np.dtype(type(value)).name in PLAIN_DTYPES:
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes):
        return bytes(value)
    raise QuantflowError(f"cannot save {where}: a {type(value).__name__} is not a plain number")


def _array_record(array: np.ndarray, where: str) -> dict:
    name = array.dtype.name
    if name not in PLAIN_DTYPES or array.dtype.fields is not None:
        raise QuantflowError(
            f"cannot save {where}: arrays of dtype {array.dtype} are not supported "
            f"(only {', '.join(PLAIN_DTYPES)})"
        )
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return {ARRAY_KEY: name, "shape": [int(d) for d in array.shape], "data": little.tobytes()}


def dumps_plain(obj: object, what: str = "value") -> bytes:
    """The pickle of `to_plain(obj)` (protocol 4)."""
    return pickle.dumps(to_plain(obj, what), protocol=PICKLE_PROTOCOL)


def save_plain(obj: object, path: str | os.PathLike[str], what: str = "value") -> None:
    """Write `dumps_plain(obj)` to `path` atomically (quantflow.formats.atomic.write_atomic)."""
    from quantflow.formats.atomic import write_atomic

    write_atomic(path, dumps_plain(obj, what))


# --------------------------------------------------------------------------- reading

# Opcodes of plain values as Python 3 writes them (protocols 0 to 5). Everything else
# (globals, calls, BUILD, extensions, persistent ids, out-of-band buffers, sets,
# bytearrays, Python 2 byte strings) is refused before anything is unpickled.
_PLAIN_OPCODES = frozenset(
    """PROTO FRAME STOP MARK POP POP_MARK DUP NONE NEWTRUE NEWFALSE INT BININT BININT1
    BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8
    BINBYTES SHORT_BINBYTES BINBYTES8 EMPTY_LIST APPEND APPENDS LIST EMPTY_TUPLE TUPLE
    TUPLE1 TUPLE2 TUPLE3 EMPTY_DICT DICT SETITEM SETITEMS PUT BINPUT LONG_BINPUT MEMOIZE
    GET BINGET LONG_BINGET""".split()
)
_GLOBAL_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST"})
_STRING_OPCODES = frozenset({"UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"})
_OLD_FORMAT_MODULES = ("numpy", "collections", "_codecs", "copyreg")


class _Refused(Exception):
    """A plain file that is not plain: carries the globals it names."""

    def __init__(self, reason: str, globals_named: list[str]):
        super().__init__(reason)
        self.globals_named = globals_named


def _scan(blob: bytes) -> None:
    """Check the opcode stream of a plain pickle without running it: only plain-value
    opcodes, every length inside the file (pickletools reads exactly what each opcode
    declares), memo indices allocated in order, frames inside the file, nothing after
    STOP. Raises _Refused (naming any globals) or ValueError."""
    memo_count, memo_strings, recent = 0, {}, []
    globals_named, refused = [], None
    stream = io.BytesIO(blob)
    stopped = False
    for opcode, arg, pos in pickletools.genops(stream):
        name = opcode.name
        if name in _STRING_OPCODES:
            recent = (recent + [arg])[-2:]
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            index = memo_count if name == "MEMOIZE" else arg
            if index > memo_count:
                raise ValueError(f"memo index {index} at byte {pos} is out of order")
            memo_count += index == memo_count
            if recent:
                memo_strings[index] = recent[-1]
            continue  # memoizing keeps the recent strings
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg >= memo_count:
                raise ValueError(f"memo index {arg} at byte {pos} was never stored")
            recent = (recent + [memo_strings.get(arg)])[-2:]
            continue
        elif name == "FRAME":
            if arg > len(blob) - stream.tell():
                raise ValueError(f"frame of {arg} bytes at byte {pos} runs past the end")
        if name in _GLOBAL_OPCODES:
            if name == "STACK_GLOBAL":
                parts = [p for p in recent if isinstance(p, str)]
                qualified = ".".join(parts) if len(parts) == 2 else "(unknown)"
            else:
                qualified = ".".join(str(arg).split(" ", 1))
            globals_named.append(qualified)
        elif name not in _PLAIN_OPCODES and refused is None:
            refused = f"opcode {name} at byte {pos}"
        if name not in _STRING_OPCODES:
            recent = []
        if name == "STOP":
            stopped = True
    if globals_named or refused:
        raise _Refused(refused or "", globals_named)
    if not stopped:
        raise EOFError
    if stream.tell() != len(blob):
        raise ValueError(f"{len(blob) - stream.tell()} bytes after the end of the pickle")


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain values only: no global is ever resolved."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} refused")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids refused")


def rerun_advice(rule: str | None) -> str:
    """How to recreate a bad file the workflow rule `rule` wrote: force that rule (deleting
    the file alone does not do it: what was made from it still exists, so snakemake has
    nothing to do)."""
    if not rule:
        return "delete it and create it again"
    return (
        f"recreate it with: snakemake --cores all --forcerun {rule} (add your --configfile; "
        "deleting the file alone is not enough: what was made from it still exists, so "
        "snakemake would see nothing to do)"
    )


def load_plain(
    fileobj_or_path: str | os.PathLike[str] | BinaryIO,
    *,
    what: str = "file",
    rerun: str | None = None,
) -> object:
    """Read a file written by :func:`save_plain`: plain values, with array records turned
    back into (writable, native-endian) numpy arrays. `what` names the file in messages;
    `rerun` names the workflow rule(s) that write it, for the fix they suggest.

    Raises QuantflowError for a missing, truncated or corrupt file, one that names any
    global (nothing is executed; a file of the old numpy-pickle format is recognized and
    the message says to rerun the rule), or an array record that is not consistent.
    """
    blob, source = _read(fileobj_or_path, what)
    fix = rerun_advice(rerun)
    try:
        _scan(blob)
        raw = _PlainUnpickler(io.BytesIO(blob)).load()
        return _Decoder(len(blob)).decode(raw, 0)
    except _Refused as e:
        raise QuantflowError(_refusal(source, e, fix)) from None
    except EOFError:
        reason = "it ends too early (truncated)"
    except RecursionError:
        reason = "it is nested too deeply"
    except Exception as e:  # anything the bytes can make the parser say
        reason = f"{type(e).__name__}: {e}"
    raise QuantflowError(f"{source} is corrupt or truncated ({reason}); {fix}")


def _refusal(source: str, refused: _Refused, fix: str) -> str:
    names = refused.globals_named
    if names and all(n.split(".")[0] in _OLD_FORMAT_MODULES for n in names):
        return (
            f"{source} is in an old format (numpy objects pickled as such, naming "
            f"{', '.join(sorted(set(names)))}), which quantflow no longer reads because such "
            f"a pickle can run code; nothing in it was executed; {fix}"
        )
    if names:
        named = ", ".join(repr(n) for n in dict.fromkeys(names))
        return (
            f"{source} refers to the Python global(s) {named}, which a quantflow file never "
            "contains (only plain values and array records); nothing was executed. The file "
            f"may have been tampered with: {fix}"
        )
    return (
        f"{source} holds more than plain values ({refused}); nothing was executed. The "
        f"file may have been tampered with: {fix}"
    )


class _Decoder:
    """Checks that an unpickled tree holds plain values only and rebuilds its arrays;
    all arrays together may hold at most `budget` bytes (the file's size)."""

    def __init__(self, budget: int):
        self.budget = budget
        self.done: dict[int, object] = {}
        self.active: set[int] = set()

    def decode(self, obj: object, depth: int) -> object:
        kind = type(obj)
        if kind in (str, int, float, bool, type(None), bytes):
            return obj
        if kind not in (dict, list, tuple):
            raise ValueError(f"a {kind.__name__} is not a plain value")
        key = id(obj)
        if key in self.done:
            return self.done[key]
        if key in self.active or depth >= MAX_DEPTH:
            raise ValueError(f"containers nested more than {MAX_DEPTH} deep (or in a cycle)")
        self.active.add(key)
        if kind is dict and ARRAY_KEY in obj:
            result = self._array(obj)
        elif kind is dict:
            result = {}
            for k, v in obj.items():
                if type(k) not in (str, int, float, bool, type(None), bytes):
                    raise ValueError(f"a dict key is a {type(k).__name__}")
                result[k] = self.decode(v, depth + 1)
        else:
            items = [self.decode(v, depth + 1) for v in obj]
            result = tuple(items) if kind is tuple else items
        self.active.discard(key)
        self.done[key] = result
        return result

    def _array(self, record: dict) -> np.ndarray:
        if set(record) != {ARRAY_KEY, "shape", "data"}:
            raise ValueError(
                f"an array record has the keys {sorted(map(str, record))}, "
                f"not {ARRAY_KEY!r}, 'shape', 'data'"
            )
        name, shape, data = record[ARRAY_KEY], record["shape"], record["data"]
        if type(name) is not str or name not in PLAIN_DTYPES:
            raise ValueError(f"array dtype {name!r} is not one of {', '.join(PLAIN_DTYPES)}")
        if type(shape) not in (list, tuple) or len(shape) > MAX_NDIM:
            raise ValueError(f"array shape is not a list of at most {MAX_NDIM} sizes")
        if not all(type(d) is int and 0 <= d < 2**62 for d in shape):
            raise ValueError(f"array shape {shape!r} is not a list of sizes")
        if type(data) is not bytes:
            raise ValueError(f"array data is a {type(data).__name__}, not bytes")
        dtype = np.dtype(name)
        expected = math.prod(shape) * dtype.itemsize
        if expected != len(data):
            raise ValueError(
                f"array of shape {tuple(shape)} and dtype {name} needs {expected} bytes, "
                f"the file has {len(data)}"
            )
        self.budget -= len(data)
        if self.budget < 0:
            raise ValueError("arrays share data: together they hold more bytes than the file")
        if name == "bool":
            flat = np.frombuffer(data, np.uint8) != 0
        else:
            flat = np.frombuffer(data, dtype.newbyteorder("<")).astype(dtype)
        return flat.reshape(shape)


# --------------------------------------------------------------------------- numpy pickles

_LATIN1 = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"}
_DTYPE_CODES = {np.dtype(n).str[1:]: n for n in PLAIN_DTYPES}  # 'f4' -> 'float32', ...
_NDARRAY = object()  # what the global numpy.ndarray means here: only a tag for _reconstruct


def is_plain_dtype(dtype: object) -> bool:
    """Whether `dtype` is a plain numeric numpy dtype of `PLAIN_DTYPES` (no fields,
    subarray, metadata or object flags), safe to copy and compute with."""
    return (
        isinstance(dtype, np.dtype)
        and dtype.fields is None
        and dtype.subdtype is None
        and dtype.metadata is None
        and not dtype.hasobject
        and dtype.flags == 0
        and dtype.name in PLAIN_DTYPES
        and dtype.itemsize == np.dtype(dtype.name).itemsize
    )


def _text(value: object) -> object:
    return value.decode("latin1") if isinstance(value, bytes) else value


def _check_dtype(dtype: object) -> np.dtype:
    if not is_plain_dtype(dtype):
        raise pickle.UnpicklingError(
            f"numpy dtype {dtype!r} is not a plain numeric dtype ({', '.join(PLAIN_DTYPES)})"
        )
    return dtype  # type: ignore[return-value]


def _make_dtype(code: object, align: object = False, copy: object = False) -> np.dtype:
    """numpy.dtype(code, align, copy) for plain numeric codes only, always a new object
    (a BUILD step then sets its byte order, never that of numpy's shared builtins)."""
    code = _text(code)
    if not isinstance(code, str) or code.lstrip("<>|=") not in _DTYPE_CODES or align:
        raise pickle.UnpicklingError(f"numpy dtype {code!r} is not a plain numeric dtype")
    order = code[0] if code[0] in "<>" else "="
    return np.dtype(_DTYPE_CODES[code.lstrip("<>|=")]).newbyteorder(order)


def _reconstruct(cls: object, shape: object, dtype_code: object) -> np.ndarray:
    """numpy's _reconstruct as its pickles call it: an empty array, filled by BUILD."""
    if cls is not _NDARRAY or tuple(shape) != (0,) or _text(dtype_code) != "b":  # type: ignore[arg-type]
        raise pickle.UnpicklingError("numpy _reconstruct is only allowed as numpy pickles call it")
    return _multiarray._reconstruct(np.ndarray, (0,), b"b")


def _nbytes(shape: object, dtype: np.dtype) -> int:
    if not isinstance(shape, tuple) or len(shape) > MAX_NDIM:
        raise pickle.UnpicklingError(f"array shape {shape!r} is not a tuple of sizes")
    if not all(type(d) is int and 0 <= d < 2**62 for d in shape):
        raise pickle.UnpicklingError(f"array shape {shape!r} is not a tuple of sizes")
    return math.prod(shape) * dtype.itemsize


def _scalar(dtype: object, data: object) -> np.generic:
    dtype = _check_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError("numpy scalar data does not match its dtype")
    return _multiarray.scalar(dtype, data)


def _frombuffer(buffer: object, dtype: object, shape: object, order: object) -> np.ndarray:
    dtype = _check_dtype(dtype)
    if not isinstance(buffer, (bytes, bytearray)) or order not in ("C", "F"):
        raise pickle.UnpicklingError("numpy _frombuffer needs bytes and order 'C' or 'F'")
    if _nbytes(shape, dtype) != len(buffer):
        raise pickle.UnpicklingError("numpy array data does not match its shape and dtype")
    return _numeric._frombuffer(buffer, dtype, shape, order)


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as Python 3 protocol-2 pickles use it for bytes: latin-1 only."""
    if not isinstance(text, str) or str(encoding).lower() not in _LATIN1 or errors != "strict":
        raise pickle.UnpicklingError(
            f"_codecs.encode is only allowed as encode(str, 'latin1'), got encoding {encoding!r}"
        )
    return text.encode("latin1")


def _allowed_globals() -> dict[str, object]:
    """The "module.name" globals a numpy pickle may reference, mapped to checked stand-ins.

    Pickles written with numpy 1.x say `numpy.core`, numpy 2.x says `numpy._core`; both
    map to the same stand-ins, so neither deprecated module gets imported.
    """
    allowed: dict[str, object] = {
        "numpy.ndarray": _NDARRAY,
        "numpy.dtype": _make_dtype,
        "collections.OrderedDict": collections.OrderedDict,
        "_codecs.encode": _latin1_encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[f"{package}.multiarray._reconstruct"] = _reconstruct
        allowed[f"{package}.multiarray.scalar"] = _scalar
        allowed[f"{package}.numeric._frombuffer"] = _frombuffer
    return allowed


ALLOWED_GLOBALS = _allowed_globals()


def _checked_build(self: "_NumpyUnpickler") -> None:
    """BUILD for the two kinds of object numpy pickles set state on: a dtype from
    _make_dtype (only a byte order may be set) and an array from _reconstruct (plain
    dtype, raw bytes of exactly the size of its shape). Nothing else may be built."""
    state = self.stack.pop()
    inst = self.stack[-1]
    if isinstance(inst, np.dtype):
        if not (
            isinstance(state, tuple)
            and len(state) in (8, 9)
            and state[0] in (3, 4)
            and _text(state[1]) in ("<", ">", "|", "=")
            and state[2:5] == (None, None, None)
            and state[5] in (-1, inst.itemsize)
            and state[6] in (-1, inst.alignment)
            and state[7] == 0
            and (len(state) == 8 or state[8] is None)
        ):
            raise pickle.UnpicklingError("numpy dtype state other than a plain byte order")
        inst.__setstate__((state[0], _text(state[1]), *state[2:]))
        _check_dtype(inst)
    elif type(inst) is np.ndarray and inst.size == 0:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("numpy array state is not a tuple of 4 or 5 items")
        shape, dtype, fortran, raw = state[-4:]
        dtype = _check_dtype(dtype)
        if isinstance(raw, str):
            raw = raw.encode("latin1")
        if not isinstance(raw, bytes) or not isinstance(fortran, (bool, int)):
            raise pickle.UnpicklingError("numpy array state holds no raw bytes")
        if _nbytes(shape, dtype) != len(raw):
            raise pickle.UnpicklingError("numpy array data does not match its shape and dtype")
        inst.__setstate__((*state[:-4], shape, dtype, bool(fortran), raw))
    else:
        raise pickle.UnpicklingError(f"BUILD of a {type(inst).__name__} refused")


class _NumpyUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """A pure-Python Unpickler whose find_class knows only ALLOWED_GLOBALS and whose
    BUILD is `_checked_build`."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]
    dispatch[pickle.BUILD[0]] = _checked_build

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
    """Unpickle numpy data (plain numeric arrays, dtypes and scalars in plain containers)
    from a path or binary file object, refusing any other code.

    `encoding` decodes Python 2 strings as pickle.load does: "bytes" keeps them as bytes
    (as the CIFAR-10 python batches need), "latin1" decodes them. `what` names the data
    in error messages ("CIFAR-10 batch"); a path (or file object's name) is added to it.
    Raises QuantflowError for a missing, truncated or corrupt file or a forbidden global.
    """
    blob, source = _read(fileobj_or_path, what)
    return _load(io.BytesIO(blob), encoding, source)


def _read(fileobj_or_path, what: str) -> tuple[bytes, str]:
    """The bytes of a path or binary file object, and how messages name it."""
    if isinstance(fileobj_or_path, (str, os.PathLike)):
        source = f"{what} {Path(fileobj_or_path)}"
        try:
            with open(fileobj_or_path, "rb") as handle:
                return handle.read(), source
        except OSError as e:
            raise QuantflowError(f"cannot read {source}: {e.strerror or e}") from None
    name = getattr(fileobj_or_path, "name", None)
    source = f"{what} {name}" if isinstance(name, (str, bytes)) and name else what
    return fileobj_or_path.read(), source


def _check_lengths(blob: bytes) -> None:
    """Walk the opcodes without running them: every length an opcode declares (bytes,
    strings, frames) must lie inside the file, since the unpickler may allocate it before
    reading (a bytearray8 does). Raises ValueError."""
    stream = io.BytesIO(blob)
    for opcode, arg, pos in pickletools.genops(stream):
        if opcode.name == "FRAME" and arg > len(blob) - stream.tell():
            raise ValueError(f"frame of {arg} bytes at byte {pos} runs past the end")


def _load(handle: io.BytesIO, encoding: str, source: str) -> object:
    """Run the restricted unpickler; turn every kind of bad data into QuantflowError."""
    try:
        _check_lengths(handle.getvalue())
        return _NumpyUnpickler(handle, encoding=encoding, source=source).load()
    except QuantflowError:
        raise
    except EOFError:
        reason = "it ends too early (truncated)"
    except RecursionError:
        reason = "it is nested too deeply"
    except Exception as e:  # anything the bytes can make the parser or numpy say
        reason = f"{type(e).__name__}: {e}"
    raise QuantflowError(
        f"{source} is corrupt or truncated: not a valid pickle of numpy data ({reason}); "
        "delete it and download, extract or create it again"
    )


__all__: list[str] = [
    "ARRAY_KEY",
    "PLAIN_DTYPES",
    "dumps_plain",
    "is_plain_dtype",
    "load_plain",
    "safe_load",
    "save_plain",
    "to_plain",
]
