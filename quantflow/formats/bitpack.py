"""Packed mixed-precision weights: every output channel at its own bit width (1 to 16).

The deployable file of adjustable mixed-precision quantization (issue 11): each weight
tensor's integer codes, each output channel packed at exactly its own bit width, with the
per-channel float32 scales (weights = codes * scale), plus biases and other small arrays as
they are. The payload of a tensor is sum over channels of (values per channel x bits),
padded to a whole byte once per tensor: exactly the parameter storage the MicroNet score
counts for the kernel (a k-bit value counts k/32 of a 32-bit word), see `storage_words`.

Layout
------
* Codes come in the layer's own Keras layout; `channel_axis` names the output-channel
  axis (default -1: Conv2D (kh, kw, in, out), Dense (in, out)) or a tuple of consecutive
  axes whose C-order flattening is the output channel: DepthwiseConv2D (kh, kw, in, mult)
  uses (-2, -1), output channel = in_index * mult + m, as Keras orders it
  (`KERAS_CHANNEL_AXIS` has both). Stored as non-negative axes.
* Channel-major payload: channel 0's values, then channel 1's, ...; a channel's values
  are those at its index in C order of the remaining axes (for a Conv2D kernel: kh, kw,
  in). Channel c starts at bit sum_{c' < c} n * bits[c'] (n values per channel).
* LSB-first: a value's bit 0 comes first in the stream, and stream bit i is bit (i % 8)
  of payload byte i // 8 (numpy's bitorder="little"). The last byte's unused high bits
  are zero.
* Signed codes (the default) are symmetric narrow range, as the quantizers make them:
  [-(2**(b-1) - 1), 2**(b-1) - 1], stored as b-bit two's complement; the pattern
  -2**(b-1) never occurs (refused on load). A 1-bit signed channel can therefore hold
  only 0 (a pruned channel; it still costs 1 bit per value, as the score counts it).
  Unsigned codes (``signed=False``, one flag per tensor) are [0, 2**b - 1].
* Decoded codes are int8 (uint8 unsigned) when every channel has at most 8 bits, else
  int16 (uint16). Dequantized weights are ``codes.astype(float32) * scale`` (float32,
  scale broadcast over the channel's values): bit-exact on both sides of the file.

File (written by `save_packed` with `quantflow.formats.safepickle.save_plain`, atomically; read
by `load_packed` with `load_plain`, so it holds only plain values and array records)::

    {"format": "quantflow.bitpack", "version": 1,
     "bit_order": "lsb-first", "layout": "channel-major",
     "tensors": {name: {"shape": [int, ...], "channel_axes": [int, ...],
                        "signed": bool, "bits": uint8 (C,), "scales": float32 (C,),
                        "payload": bytes}},
     "arrays": {name: ndarray},      # biases (int32 or float) etc., as given
     "meta": {str: plain value}}     # free-form: model, config, ...

`load_packed` checks all of it (keys, tag, version, shapes, axes, bits in 1..16, finite
non-negative scales, payload length equal to the bits the shape and widths need, zero
padding, no -2**(b-1) code) before decoding, and raises one QuantflowError naming the file
and the tensor and saying to rerun the rule that wrote it.

Storage accounting (`PackedFile.storage`): "payload_bits" (sum of n * bits over every
channel of every tensor) / 32 = "storage_words", MicroNet's weight storage; the per-tensor
byte padding, the scales (4 bytes per channel), the bit widths (1 byte per channel) and
the arrays (biases: MicroNet counts them separately, at the bias bits) are reported on
their own, and `file_storage` adds the file size and the rest ("overhead_bytes": names,
shapes and pickle framing).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from quantflow.errors import QuantflowError

FORMAT = "quantflow.bitpack"  # the file format's name (not a module path: it stays)
VERSION = 1
BIT_ORDER = "lsb-first"
LAYOUT = "channel-major"
MAX_BITS = 16
MAX_NDIM = 8
MAX_VALUES = 2**40  # per tensor: far beyond any model, far below int64 overflow
KERAS_CHANNEL_AXIS = {"conv": -1, "dense": -1, "depthwise": (-2, -1)}
_CHUNK_VALUES = 1 << 18  # values encoded / decoded per step (bounds temporary memory)
_TENSOR_KEYS = {"shape", "channel_axes", "signed", "bits", "scales", "payload"}
_INPUT_KEYS = {"codes", "bits", "scales", "channel_axis", "signed"}
_FILE_KEYS = {"format", "version", "bit_order", "layout", "tensors", "arrays", "meta"}


# --------------------------------------------------------------------------- shapes


def _axes(channel_axis, ndim: int, where: str) -> tuple[int, ...]:
    """`channel_axis` (an int or consecutive ints) as ascending non-negative axes."""
    raw = (channel_axis,) if isinstance(channel_axis, (int, np.integer)) else channel_axis
    try:
        raw = tuple(raw)
    except TypeError:
        raise QuantflowError(
            f"{where}: channel_axis {channel_axis!r} is not an axis or a tuple of axes"
        ) from None
    if not raw or not all(
        isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in raw
    ):
        raise QuantflowError(f"{where}: channel_axis {channel_axis!r} is not an axis or axes")
    if not all(-ndim <= a < ndim for a in raw):
        raise QuantflowError(
            f"{where}: channel_axis {channel_axis!r} is out of range for {ndim} dimensions"
        )
    axes = tuple(int(a) % ndim for a in raw)
    if axes != tuple(range(axes[0], axes[0] + len(axes))):
        raise QuantflowError(
            f"{where}: channel axes {channel_axis!r} must be consecutive and in order"
        )
    return axes


def _split(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, int]:
    """(channels C, values per channel n) of a tensor of `shape`."""
    channels = math.prod(shape[a] for a in axes)
    return channels, math.prod(d for i, d in enumerate(shape) if i not in axes)


def _bits_array(bits, channels: int, where: str) -> np.ndarray:
    arr = np.asarray(bits)
    if arr.ndim == 0:
        arr = np.full(channels, arr)
    if arr.dtype.kind not in "iu" or arr.shape != (channels,):
        raise QuantflowError(
            f"{where}: bits must be an integer or {channels} integers (one per output "
            f"channel), got {arr.dtype} of shape {arr.shape}"
        )
    if arr.size and (arr.min() < 1 or arr.max() > MAX_BITS):
        bad = int(np.flatnonzero((arr < 1) | (arr > MAX_BITS))[0])
        raise QuantflowError(
            f"{where}: channel {bad} has {int(arr[bad])} bits; bit widths are 1 to {MAX_BITS}"
        )
    return arr.astype(np.uint8)


def _scales_array(scales, channels: int, where: str) -> np.ndarray:
    arr = np.asarray(scales)
    if arr.ndim == 0:
        arr = np.full(channels, arr)
    if arr.dtype.kind not in "fiu" or arr.shape != (channels,):
        raise QuantflowError(
            f"{where}: scales must be a number or {channels} numbers (one per output "
            f"channel), got {arr.dtype} of shape {arr.shape}"
        )
    arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        c = int(np.flatnonzero(bad)[0])
        raise QuantflowError(
            f"{where}: channel {c} has scale {arr[c]}; scales must be finite and >= 0"
        )
    return arr


def code_range(bits, signed: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) code of `bits`-bit codes (arrays like `bits`): signed narrow
    range [-(2**(b-1) - 1), 2**(b-1) - 1] (1 bit: only 0), unsigned [0, 2**b - 1]."""
    b = np.asarray(bits, dtype=np.int64)
    if signed:
        hi = (np.int64(1) << (b - 1)) - 1
        return -hi, hi
    return np.zeros_like(b), (np.int64(1) << b) - 1


def packed_bits(shape, bits, channel_axis=-1) -> int:
    """Payload bits of a tensor of `shape` whose output channels (on `channel_axis`) have
    `bits` (one int, or one per channel): sum over channels of values per channel x bits.
    Storage in 32-bit words, as the MicroNet score counts it, is this / 32."""
    shape = tuple(int(d) for d in shape)
    axes = _axes(channel_axis, len(shape), "packed_bits")
    channels, n = _split(shape, axes)
    return int(_bits_array(bits, channels, "packed_bits").astype(np.int64).sum()) * n


def payload_bytes(shape, bits, channel_axis=-1) -> int:
    """Bytes of a tensor's payload: `packed_bits` rounded up to a whole byte."""
    return (packed_bits(shape, bits, channel_axis) + 7) // 8


# --------------------------------------------------------------------------- tensors


@dataclass(frozen=True, eq=False)
class PackedTensor:
    """One weight tensor, packed (see the module doc for the layout)."""

    shape: tuple[int, ...]
    channel_axes: tuple[int, ...]  # non-negative, consecutive
    bits: np.ndarray  # uint8, one per output channel
    scales: np.ndarray  # float32, one per output channel
    signed: bool
    payload: bytes
    name: str = "tensor"

    @property
    def channels(self) -> int:
        return _split(self.shape, self.channel_axes)[0]

    @property
    def values_per_channel(self) -> int:
        return _split(self.shape, self.channel_axes)[1]

    @property
    def payload_bits(self) -> int:
        return int(self.bits.astype(np.int64).sum()) * self.values_per_channel

    @property
    def payload_bytes(self) -> int:
        return len(self.payload)

    @property
    def storage_words(self) -> float:
        """MicroNet parameter storage of the kernel: payload bits / 32."""
        return self.payload_bits / 32

    def codes(self) -> np.ndarray:
        """The integer codes in the tensor's own layout (int8/int16, uint8/uint16)."""
        return _decode(self, self.name)

    def weights(self) -> np.ndarray:
        """codes * scale per output channel, float32."""
        return dequantize(self.codes(), self.scales, self.channel_axes)


def dequantize(codes, scales, channel_axis=-1) -> np.ndarray:
    """``codes.astype(float32) * scales`` with one scale per output channel (on
    `channel_axis`, as in `pack_tensor`): the float32 weights."""
    codes = np.asarray(codes)
    axes = _axes(channel_axis, codes.ndim, "dequantize")
    shape = [1] * codes.ndim
    for a in axes:
        shape[a] = codes.shape[a]
    channels = _split(codes.shape, axes)[0]
    scales = _scales_array(scales, channels, "dequantize").reshape(shape)
    return codes.astype(np.float32) * scales


def pack_tensor(
    codes, bits, scales, *, channel_axis=-1, signed: bool = True, name: str = "tensor"
) -> PackedTensor:
    """Pack integer `codes` (any integer dtype, the layer's own layout) whose output
    channels lie on `channel_axis` (an axis, or consecutive axes flattened in C order:
    (-2, -1) for a DepthwiseConv2D kernel) at `bits` per channel (1..16; one int or one
    per channel), with float `scales` (one number or one per channel; weights = codes *
    scale). Codes outside their channel's range (`code_range`) are refused, naming the
    tensor, the channel and the value."""
    where = f"tensor {name!r}"
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iu":
        raise QuantflowError(
            f"{where}: codes must be an integer array (round and cast them), got {codes.dtype}"
        )
    if not 1 <= codes.ndim <= MAX_NDIM:
        raise QuantflowError(f"{where}: codes must have 1 to {MAX_NDIM} dimensions")
    if type(signed) is not bool and not isinstance(signed, np.bool_):
        raise QuantflowError(f"{where}: signed must be True or False, got {signed!r}")
    axes = _axes(channel_axis, codes.ndim, where)
    channels, n = _split(codes.shape, axes)
    bits = _bits_array(bits, channels, where)
    scales = _scales_array(scales, channels, where)
    matrix = _channel_major(codes, axes).astype(np.int64)
    lo, hi = code_range(bits, bool(signed))
    bad = (matrix < lo[:, None]) | (matrix > hi[:, None])
    if bad.any():
        c, i = (int(v[0]) for v in np.nonzero(bad))
        raise QuantflowError(
            f"{where}: channel {c} holds code {int(matrix[c, i])}, outside "
            f"[{int(lo[c])}, {int(hi[c])}] of {int(bits[c])}-bit "
            f"{'signed narrow-range' if signed else 'unsigned'} codes"
        )
    payload = _encode(matrix, bits)
    return PackedTensor(
        tuple(int(d) for d in codes.shape), axes, bits, scales, bool(signed), payload, name
    )


def unpack_tensor(packed: PackedTensor) -> np.ndarray:
    """The codes of `packed` (same as `packed.codes()`)."""
    return packed.codes()


def _channel_major(array: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """`array` as (C, n): channel axes first, the rest in C order."""
    moved = np.moveaxis(array, axes, tuple(range(len(axes))))
    channels, n = _split(array.shape, axes)
    return moved.reshape(channels, n)


def _from_channel_major(matrix: np.ndarray, shape, axes) -> np.ndarray:
    channel_dims = [shape[a] for a in axes]
    rest = [d for i, d in enumerate(shape) if i not in axes]
    moved = matrix.reshape(channel_dims + rest)
    return np.ascontiguousarray(np.moveaxis(moved, tuple(range(len(axes))), axes))


def _offsets(bits: np.ndarray, n: int) -> np.ndarray:
    """Start bit of every channel, and the total, as C + 1 int64."""
    return np.concatenate([[0], np.cumsum(bits.astype(np.int64) * n)])


def _groups(bits: np.ndarray, n: int):
    """(bit width, channel indices) chunks of at most about _CHUNK_VALUES values each
    (one channel at least), so temporaries stay small whatever the tensor's size."""
    for b in np.unique(bits):
        idx = np.flatnonzero(bits == b)
        step = max(1, _CHUNK_VALUES // max(1, n))
        for start in range(0, idx.size, step):
            yield int(b), idx[start : start + step]


def _positions(offsets: np.ndarray, idx: np.ndarray, width: int):
    """Where the `width` stream bits of channels `idx` lie: a slice for one channel, else
    a (k, width) index array (k channels of one bit width, each a contiguous run)."""
    if idx.size == 1:
        start = int(offsets[idx[0]])
        return slice(start, start + width)
    return offsets[idx][:, None] + np.arange(width, dtype=np.int64)


def _encode(matrix: np.ndarray, bits: np.ndarray) -> bytes:
    """Pack a (C, n) int64 code matrix (already range-checked) at `bits` per row."""
    channels, n = matrix.shape
    offsets = _offsets(bits, n)
    stream = np.zeros(int(offsets[-1]), dtype=np.uint8)  # one byte per bit
    for b, idx in _groups(bits, n):
        # b-bit two's complement (unsigned codes unchanged) as little-endian 16-bit words,
        # split into bits, least significant first; keep the low b
        words = (matrix[idx] & ((1 << b) - 1)).astype("<u2")
        planes = np.unpackbits(
            words.view(np.uint8).reshape(idx.size, n, 2), axis=-1, bitorder="little"
        )[..., :b]
        where = _positions(offsets, idx, n * b)
        rows = planes.reshape(idx.size, n * b)
        stream[where] = rows[0] if isinstance(where, slice) else rows
    return np.packbits(stream, bitorder="little").tobytes()


def _decode(packed: PackedTensor, where: str) -> np.ndarray:
    """Unpack the codes of `packed` (validated shape, bits and payload length)."""
    bits, signed = packed.bits, packed.signed
    channels, n = _split(packed.shape, packed.channel_axes)
    offsets = _offsets(bits, n)
    wide = bool(bits.size) and int(bits.max()) > 8
    dtype = (np.int16 if wide else np.int8) if signed else (np.uint16 if wide else np.uint8)
    stream = np.unpackbits(
        np.frombuffer(packed.payload, np.uint8), bitorder="little", count=int(offsets[-1])
    )
    out = np.empty((channels, n), dtype=dtype)
    for b, idx in _groups(bits, n):
        planes = np.zeros((idx.size, n, 16), dtype=np.uint8)
        planes[..., :b] = stream[_positions(offsets, idx, n * b)].reshape(idx.size, n, b)
        values = np.packbits(planes, axis=-1, bitorder="little").view("<u2")[..., 0]
        values = values.astype(np.int32)
        if signed:
            half = 1 << (b - 1)
            if (values == half).any():  # the pattern of -2**(b-1): not narrow range
                c = int(idx[np.nonzero(values == half)[0][0]])
                raise QuantflowError(
                    f"{where}: channel {c} holds code {-half}, outside the {b}-bit "
                    "signed narrow range"
                )
            values = np.where(values > half, values - (1 << b), values)
        out[idx] = values.astype(dtype)
    return _from_channel_major(out, packed.shape, packed.channel_axes)


# --------------------------------------------------------------------------- files


@dataclass
class PackedFile:
    """The contents of a packed-weights file."""

    tensors: dict[str, PackedTensor]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def codes(self, name: str) -> np.ndarray:
        return self.tensors[name].codes()

    def weights(self, name: str) -> np.ndarray:
        return self.tensors[name].weights()

    @property
    def payload_bits(self) -> int:
        return sum(t.payload_bits for t in self.tensors.values())

    @property
    def storage_words(self) -> float:
        """MicroNet weight storage of all tensors (32-bit words): payload bits / 32."""
        return self.payload_bits / 32

    def storage(self) -> dict:
        """Bytes and bits by kind (see the module doc: what MicroNet counts and what not)."""
        payload_bytes = sum(t.payload_bytes for t in self.tensors.values())
        return {
            "payload_bits": self.payload_bits,
            "storage_words": self.storage_words,
            "payload_bytes": payload_bytes,
            "padding_bits": 8 * payload_bytes - self.payload_bits,
            "scale_bytes": sum(4 * t.channels for t in self.tensors.values()),
            "bits_bytes": sum(t.channels for t in self.tensors.values()),
            "array_bytes": sum(int(a.nbytes) for a in self.arrays.values()),
            "values": sum(t.channels * t.values_per_channel for t in self.tensors.values()),
        }


def _as_packed(name: str, value) -> PackedTensor:
    if isinstance(value, PackedTensor):
        return (
            value
            if value.name == name
            else PackedTensor(
                value.shape,
                value.channel_axes,
                value.bits,
                value.scales,
                value.signed,
                value.payload,
                name,
            )
        )
    if not isinstance(value, Mapping):
        raise QuantflowError(
            f"tensor {name!r}: give a PackedTensor or a dict with codes, bits, scales "
            f"(and channel_axis, signed), not a {type(value).__name__}"
        )
    missing, unknown = {"codes", "bits", "scales"} - set(value), set(value) - _INPUT_KEYS
    if missing or unknown:
        raise QuantflowError(
            f"tensor {name!r}: missing keys {sorted(missing)}, unknown keys "
            f"{sorted(map(str, unknown))} (allowed: {', '.join(sorted(_INPUT_KEYS))})"
        )
    return pack_tensor(
        value["codes"],
        value["bits"],
        value["scales"],
        channel_axis=value.get("channel_axis", -1),
        signed=value.get("signed", True),
        name=name,
    )


def pack_file(
    tensors: Mapping, arrays: Mapping | None = None, meta: Mapping | None = None
) -> PackedFile:
    """A PackedFile from `tensors` (name -> PackedTensor, or a dict with "codes", "bits",
    "scales" and optionally "channel_axis" (-1) and "signed" (True): see `pack_tensor`),
    `arrays` (name -> numpy array stored as it is: biases, ...) and `meta` (plain values)."""
    for kind, names in (("tensor", tensors), ("array", arrays or {}), ("meta", meta or {})):
        for key in names:
            if not isinstance(key, str) or not key:
                raise QuantflowError(f"{kind} names must be non-empty strings, got {key!r}")
    packed = {name: _as_packed(name, value) for name, value in tensors.items()}
    plain_arrays = {}
    for name, value in (arrays or {}).items():
        if not isinstance(value, np.ndarray):
            raise QuantflowError(f"array {name!r} is a {type(value).__name__}, not a numpy array")
        plain_arrays[name] = value
    return PackedFile(packed, plain_arrays, dict(meta or {}))


def to_plain_dict(packed: PackedFile) -> dict:
    """The plain dict a file holds (see the module doc)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "bit_order": BIT_ORDER,
        "layout": LAYOUT,
        "tensors": {
            name: {
                "shape": list(t.shape),
                "channel_axes": list(t.channel_axes),
                "signed": bool(t.signed),
                "bits": np.asarray(t.bits, dtype=np.uint8),
                "scales": np.asarray(t.scales, dtype=np.float32),
                "payload": bytes(t.payload),
            }
            for name, t in packed.tensors.items()
        },
        "arrays": dict(packed.arrays),
        "meta": dict(packed.meta),
    }


def save_packed(
    path: str | os.PathLike[str],
    tensors: Mapping | PackedFile,
    arrays: Mapping | None = None,
    meta: Mapping | None = None,
) -> PackedFile:
    """Pack (see `pack_file`) and write the file atomically; returns what was written."""
    from quantflow.formats.safepickle import save_plain

    packed = tensors if isinstance(tensors, PackedFile) else pack_file(tensors, arrays, meta)
    save_plain(to_plain_dict(packed), path, what="packed weights")
    return packed


def load_packed(
    path: str | os.PathLike[str],
    *,
    what: str = "packed weights file",
    rerun: str | None = "adjustable",
) -> PackedFile:
    """Read and check a file written by `save_packed`. Everything is validated before any
    payload is decoded, and every tensor is decoded once (so a code outside its range is
    caught here): any problem is one QuantflowError naming the file and the tensor and
    saying to rerun the rule `rerun` that wrote it."""
    from quantflow.formats.safepickle import load_plain, rerun_advice

    obj = load_plain(path, what=what, rerun=rerun)
    fix = rerun_advice(rerun)
    source = f"{what} {path}"

    def fail(message: str):
        return QuantflowError(f"{source}: {message}; {fix}")

    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        tag = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise fail(f"not a quantflow packed-weights file (format {tag!r}, expected {FORMAT!r})")
    if set(obj) != _FILE_KEYS:
        raise fail(f"has the keys {sorted(map(str, obj))}, expected {sorted(_FILE_KEYS)}")
    if obj["version"] != VERSION or type(obj["version"]) is not int:
        raise fail(
            f"format version {obj['version']!r} is not {VERSION} (written by another "
            "quantflow version)"
        )
    if obj["bit_order"] != BIT_ORDER or obj["layout"] != LAYOUT:
        raise fail(
            f"bit order {obj['bit_order']!r} / layout {obj['layout']!r} are not "
            f"{BIT_ORDER!r} / {LAYOUT!r}"
        )
    for key in ("tensors", "arrays", "meta"):
        if not isinstance(obj[key], dict) or not all(isinstance(k, str) and k for k in obj[key]):
            raise fail(f"{key!r} is not a dict keyed by names")
    for name, array in obj["arrays"].items():
        if not isinstance(array, np.ndarray):
            raise fail(f"array {name!r} is a {type(array).__name__}, not an array")
    tensors = {}
    for name, record in obj["tensors"].items():
        try:
            tensors[name] = _checked_tensor(name, record)
        except QuantflowError as e:
            raise fail(str(e)) from None
    for name, tensor in tensors.items():
        try:
            _decode(tensor, f"tensor {name!r}")
        except QuantflowError as e:
            raise fail(str(e)) from None
    return PackedFile(tensors, obj["arrays"], obj["meta"])


def _checked_tensor(name: str, record) -> PackedTensor:
    where = f"tensor {name!r}"
    if not isinstance(record, dict) or set(record) != _TENSOR_KEYS:
        keys = sorted(map(str, record)) if isinstance(record, dict) else type(record).__name__
        raise QuantflowError(f"{where} has the keys {keys}, expected {sorted(_TENSOR_KEYS)}")
    shape, axes = record["shape"], record["channel_axes"]
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= MAX_NDIM
        or not all(type(d) is int and 0 <= d < 2**40 for d in shape)
        or math.prod(shape) > MAX_VALUES
    ):
        raise QuantflowError(
            f"{where}: shape {shape!r} is not a list of 1 to {MAX_NDIM} "
            f"sizes with at most {MAX_VALUES} values"
        )
    if not isinstance(axes, list) or not all(type(a) is int and a >= 0 for a in axes):
        raise QuantflowError(f"{where}: channel axes {axes!r} are not a list of axes")
    if _axes(tuple(axes), len(shape), where) != tuple(axes):
        raise QuantflowError(f"{where}: channel axes {axes!r} are not ascending, non-negative")
    if type(record["signed"]) is not bool:
        raise QuantflowError(f"{where}: signed is {record['signed']!r}, not True or False")
    channels, n = _split(tuple(shape), tuple(axes))
    bits, scales, payload = record["bits"], record["scales"], record["payload"]
    for label, array, dtype in (("bits", bits, np.uint8), ("scales", scales, np.float32)):
        if not isinstance(array, np.ndarray) or array.dtype != dtype or array.shape != (channels,):
            got = (
                f"{array.dtype} of shape {array.shape}"
                if isinstance(array, np.ndarray)
                else type(array).__name__
            )
            raise QuantflowError(
                f"{where}: {label} must be {np.dtype(dtype).name} of shape "
                f"({channels},) (one per output channel), got {got}"
            )
    bits = _bits_array(bits, channels, where)
    scales = _scales_array(scales, channels, where)
    if type(payload) is not bytes:
        raise QuantflowError(f"{where}: payload is a {type(payload).__name__}, not bytes")
    total = int(bits.astype(np.int64).sum()) * n
    if len(payload) != (total + 7) // 8:
        raise QuantflowError(
            f"{where}: payload has {len(payload)} bytes, its shape {tuple(shape)} and bit "
            f"widths need {(total + 7) // 8} ({total} bits): truncated or inconsistent"
        )
    if total % 8 and payload[-1] >> (total % 8):
        raise QuantflowError(f"{where}: padding bits after the last code are not zero")
    return PackedTensor(tuple(shape), tuple(axes), bits, scales, record["signed"], payload, name)


def file_storage(path: str | os.PathLike[str], packed: PackedFile | None = None) -> dict:
    """`PackedFile.storage` of the file at `path` (loaded unless given) plus "file_bytes"
    and "overhead_bytes" (file bytes less payload, scales, bit widths and arrays: names,
    shapes and pickle framing)."""
    packed = packed if packed is not None else load_packed(path)
    out = packed.storage()
    out["file_bytes"] = os.path.getsize(path)
    out["overhead_bytes"] = out["file_bytes"] - (
        out["payload_bytes"] + out["scale_bytes"] + out["bits_bytes"] + out["array_bytes"]
    )
    return out


__all__ = [
    "FORMAT",
    "KERAS_CHANNEL_AXIS",
    "MAX_BITS",
    "VERSION",
    "PackedFile",
    "PackedTensor",
    "code_range",
    "dequantize",
    "file_storage",
    "load_packed",
    "pack_file",
    "pack_tensor",
    "packed_bits",
    "payload_bytes",
    "save_packed",
    "to_plain_dict",
    "unpack_tensor",
]
