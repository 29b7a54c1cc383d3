"""quantflow.formats.bitpack: per-channel mixed-precision weights packed at exactly their bit
widths (1..16), bit-exact round trips of codes and dequantized weights, payload sizes
worked by hand, refusal of out-of-range codes on pack and of corrupt, truncated or
inconsistent files on load (one QuantflowError naming the tensor and the rule to rerun)."""

from __future__ import annotations

import math
import pickle
import pickletools
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantflow.formats import bitpack
from quantflow.formats.bitpack import (
    FORMAT,
    KERAS_CHANNEL_AXIS,
    PackedFile,
    code_range,
    dequantize,
    file_storage,
    load_packed,
    pack_file,
    pack_tensor,
    packed_bits,
    payload_bytes,
    save_packed,
    to_plain_dict,
    unpack_tensor,
)
from quantflow.errors import QuantflowError
from quantflow.formats.safepickle import PLAIN_DTYPES, load_plain, save_plain


def random_codes(rng, shape, bits, channel_axis=-1, signed=True, extremes=True):
    """Random codes of `shape` with channel c (on `channel_axis`) in range of bits[c];
    with `extremes`, each channel's lowest and highest codes occur."""
    axes = bitpack._axes(channel_axis, len(shape), "test")
    channels, n = bitpack._split(tuple(shape), axes)
    lo, hi = code_range(bits, signed)
    matrix = rng.integers(lo[:, None], hi[:, None] + 1, size=(channels, n))
    if extremes and n >= 2:
        matrix[:, 0], matrix[:, -1] = lo, hi
    return bitpack._from_channel_major(matrix, tuple(shape), axes)


def one_line_error(excinfo, *needles):
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


# --------------------------------------------------------------------- hand-worked


def test_hand_worked_dense_kernel():
    """A 2x3 Dense kernel, output channels at 2, 3 and 8 bits: 2*(2+3+8) = 26 bits, 4 bytes.

    Channel-major, LSB-first: column 0 = (1, -1) at 2 bits: 1,0 | 1,1; column 1 = (-3, 2)
    at 3 bits (-3 = 0b101): 1,0,1 | 0,1,0; column 2 = (100, -127) at 8 bits (0x64, 0x81):
    0,0,1,0,0,1,1,0 | 1,0,0,0,0,0,0,1; stream bit i is bit i % 8 of byte i // 8:
    byte 0 = bits 0..7 = 1,0,1,1,1,0,1,0 = 0x5d; byte 1 = 1,0,0,0,1,0,0,1 = 0x91;
    byte 2 = 1,0,1,0,0,0,0,0 = 0x05; byte 3 = 0,1 + zero padding = 0x02."""
    codes = np.array([[1, -3, 100], [-1, 2, -127]])
    scales = np.array([0.5, 0.25, 0.01], np.float32)
    packed = pack_tensor(codes, [2, 3, 8], scales, name="fc")
    assert packed.payload_bits == 26 == packed_bits((2, 3), [2, 3, 8])
    assert packed.payload_bytes == 4 == payload_bytes((2, 3), [2, 3, 8])
    assert packed.payload == bytes([0x5D, 0x91, 0x05, 0x02])
    assert packed.storage_words == 26 / 32
    assert packed.channels == 3 and packed.values_per_channel == 2
    decoded = unpack_tensor(packed)
    assert decoded.dtype == np.int8 and np.array_equal(decoded, codes)
    expected = np.array(
        [
            [0.5, -0.75, np.float32(100) * np.float32(0.01)],
            [-0.5, 0.5, np.float32(-127) * np.float32(0.01)],
        ],
        np.float32,
    )
    assert packed.weights().dtype == np.float32
    assert np.array_equal(packed.weights(), expected)


def test_payload_size_formula_by_hand():
    # Conv2D 3x3, 4 in, 2 out at 4 and 5 bits: 36 values per channel: 36*9 = 324 bits
    assert packed_bits((3, 3, 4, 2), [4, 5]) == 324
    assert payload_bytes((3, 3, 4, 2), [4, 5]) == 41
    # DepthwiseConv2D 3x3, 2 in, multiplier 2: 4 channels of 9 values: 9*(1+2+3+16)
    assert packed_bits((3, 3, 2, 2), [1, 2, 3, 16], KERAS_CHANNEL_AXIS["depthwise"]) == 198
    assert payload_bytes((3, 3, 2, 2), [1, 2, 3, 16], (-2, -1)) == 25
    # one width for all channels, channel-first layout
    assert packed_bits((10, 7), 3, channel_axis=0) == 210
    with pytest.raises(QuantflowError, match="one per output channel"):
        packed_bits((3, 3, 4, 2), [4, 5, 6])


def test_payload_equals_micronet_weight_storage():
    """The file's payload / 32 is the parameter storage the MicroNet score counts for a
    Dense layer's kernel at these per-channel bits (its int32 bias counted separately)."""
    from quantflow.quant.micronet.count import LayerCount
    from quantflow.quant.micronet.score import score

    rng = np.random.default_rng(1)
    bits = np.array([2, 3, 8, 5])
    kernel = random_codes(rng, (6, 4), bits)
    count = LayerCount(
        name="fc",
        kind="dense",
        layer="Dense",
        inputs=[{"tensor": "in", "channels": 6, "elements": 1, "view_channels": 6}],
        output="fc",
        output_channels=4,
        output_elements=1,
        weight_shape=[6, 4],
        weight_channels=4,
        weights_per_channel=6,
        bias=4,
        pair_macs=1,
        multiplications=24,
        additions=24,
    )
    result = score([count], {"fc": bits}, 8, bias_bits=32)
    packed = pack_file(
        {"fc": {"codes": kernel, "bits": bits, "scales": 0.1}},
        arrays={"fc/bias": np.zeros(4, np.int32)},
    )
    storage = packed.storage()
    assert storage["payload_bits"] == 6 * (2 + 3 + 8 + 5)
    assert result["parameter_storage"] == pytest.approx(
        storage["storage_words"] + storage["array_bytes"] * 8 / 32
    )


# --------------------------------------------------------------------- round trips


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("bits", range(1, 17))
def test_round_trip_every_bit_width(bits, signed):
    rng = np.random.default_rng(bits)
    codes = random_codes(rng, (5, 7, 3), np.full(3, bits), signed=signed)
    packed = pack_tensor(codes, bits, np.float32(0.125), signed=signed)
    assert packed.payload_bits == codes.size * bits
    assert len(packed.payload) == math.ceil(codes.size * bits / 8)
    decoded = packed.codes()
    assert (
        decoded.dtype
        == {
            (True, False): np.int8,
            (True, True): np.int16,
            (False, False): np.uint8,
            (False, True): np.uint16,
        }[signed, bits > 8]
    )
    assert np.array_equal(decoded, codes)
    lo, hi = code_range(bits, signed)
    assert decoded.min() == lo and decoded.max() == hi
    assert np.array_equal(packed.weights(), codes.astype(np.float32) * np.float32(0.125))


def test_one_bit_signed_channel_holds_only_zero():
    """Narrow range at 1 bit is [-(2**0 - 1), 2**0 - 1] = [0, 0]: a pruned channel that
    still costs 1 bit per value; unsigned 1-bit codes are 0 and 1."""
    assert code_range(1) == (0, 0)
    packed = pack_tensor(np.zeros((4, 2), np.int8), [1, 4], [0.0, 1.0])
    assert packed.payload_bits == 4 * 5 and np.array_equal(packed.codes(), np.zeros((4, 2)))
    for bad in (1, -1):
        with pytest.raises(QuantflowError) as e:
            pack_tensor(np.array([[0], [bad]]), 1, 1.0, name="pruned")
        one_line_error(e, "'pruned'", "channel 0", f"code {bad}", "[0, 0]")
    codes = np.array([[0, 1], [1, 0], [1, 1]])
    assert np.array_equal(pack_tensor(codes, 1, 1.0, signed=False).codes(), codes)


@pytest.mark.parametrize(
    "shape, channel_axis",
    [
        ((3, 3, 4, 6), KERAS_CHANNEL_AXIS["conv"]),
        ((20, 10), KERAS_CHANNEL_AXIS["dense"]),
        ((3, 3, 4, 3), KERAS_CHANNEL_AXIS["depthwise"]),
        ((8, 3, 3, 2), 0),
        ((2, 5, 3), 1),
    ],
    ids=["conv", "dense", "depthwise", "channel_first", "middle"],
)
def test_mixed_bits_in_one_tensor(shape, channel_axis):
    rng = np.random.default_rng(7)
    axes = bitpack._axes(channel_axis, len(shape), "test")
    channels = math.prod(shape[a] for a in axes)
    bits = rng.integers(1, 17, channels)
    bits[:3] = [2, 8, 16]
    scales = rng.uniform(0.001, 1, channels).astype(np.float32)
    codes = random_codes(rng, shape, bits, channel_axis)
    packed = pack_tensor(codes, bits, scales, channel_axis=channel_axis, name="w")
    assert packed.payload_bits == int(bits.sum()) * (math.prod(shape) // channels)
    assert np.array_equal(packed.codes(), codes)
    # scale of output channel c multiplies exactly the values of channel c
    weights = packed.weights()
    channel_shape = [shape[a] for a in axes]
    for c in range(channels):
        index = [slice(None)] * len(shape)
        for a, i in zip(axes, np.unravel_index(c, channel_shape)):
            index[a] = int(i)
        assert np.array_equal(
            weights[tuple(index)], codes[tuple(index)].astype(np.float32) * scales[c]
        )


def test_depthwise_channel_order_is_keras():
    """A DepthwiseConv2D kernel (kh, kw, in, mult) packs exactly as the same codes seen as
    (kh, kw, in * mult) with channels last: output channel = in_index * mult + m."""
    rng = np.random.default_rng(3)
    bits = np.array([2, 7, 3, 12, 1, 5])
    codes = random_codes(rng, (3, 3, 3, 2), bits, (-2, -1))
    a = pack_tensor(codes, bits, 1.0, channel_axis=(2, 3))
    b = pack_tensor(codes.reshape(3, 3, 6), bits, 1.0)
    assert a.payload == b.payload and a.channel_axes == (2, 3)
    # the first channel's codes come first, in C order of (kh, kw)
    first = pack_tensor(codes[..., :1, :1], bits[:1], 1.0, channel_axis=(-2, -1))
    assert a.payload[:2] == first.payload[:2]  # 9 values x 2 bits = 18 bits


def test_empty_tensor_round_trips(tmp_path):
    codes = np.zeros((0, 4), np.int32)
    packed = pack_tensor(codes, [3, 4, 5, 6], 1.0)
    assert packed.payload == b"" and packed.codes().shape == (0, 4)
    save_packed(tmp_path / "e.qpack", {"e": packed})
    assert load_packed(tmp_path / "e.qpack").codes("e").shape == (0, 4)


def test_large_tensor_round_trip():
    """A ResNet-sized 3x3x256x256 kernel (590k values) at per-channel 2..8 bits."""
    rng = np.random.default_rng(11)
    bits = rng.integers(2, 9, 256)
    codes = random_codes(rng, (3, 3, 256, 256), bits)
    packed = pack_tensor(codes, bits, rng.uniform(0.01, 0.1, 256))
    assert np.array_equal(packed.codes(), codes)
    assert packed.payload_bytes == math.ceil(2304 * int(bits.sum()) / 8)


layouts = st.sampled_from(
    [
        ("dense", 2, -1),
        ("conv", 4, -1),
        ("depthwise", 4, (-2, -1)),
        ("first", 3, 0),
        ("vector", 1, -1),
    ]
)


@settings(max_examples=60, deadline=None)
@given(layout=layouts, data=st.data(), signed=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_round_trip_property(layout, data, signed, seed):
    """Any shape, layout and per-channel widths: codes and float32 weights come back
    bit-exact through memory and through a file; the payload is sum(n * bits) bits."""
    _, ndim, channel_axis = layout
    shape = tuple(data.draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim)))
    axes = bitpack._axes(channel_axis, ndim, "test")
    channels = math.prod(shape[a] for a in axes)
    n = math.prod(shape) // channels
    bits = np.array(data.draw(st.lists(st.integers(1, 16), min_size=channels, max_size=channels)))
    rng = np.random.default_rng(seed)
    codes = random_codes(rng, shape, bits, channel_axis, signed, extremes=rng.random() < 0.5)
    scales = rng.uniform(0, 2, channels).astype(np.float32)
    packed = pack_tensor(codes, bits, scales, channel_axis=channel_axis, signed=signed)
    total = n * int(bits.sum())
    assert packed.payload_bits == total == packed_bits(shape, bits, channel_axis)
    assert len(packed.payload) == (total + 7) // 8
    assert np.array_equal(packed.codes(), codes)
    weights = dequantize(codes, scales, channel_axis)
    assert np.array_equal(packed.weights(), weights)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.qpack"
        save_packed(path, {"w": packed})
        loaded = load_packed(path).tensors["w"]
        assert loaded.payload == packed.payload
        assert np.array_equal(loaded.codes(), codes)
        assert np.array_equal(loaded.weights(), weights)


# --------------------------------------------------------------------- pack refusals


@pytest.mark.parametrize(
    "codes, bits, signed, needle",
    [
        ([[2, 0]], [2, 3], True, "code 2, outside [-1, 1]"),
        ([[0, -4]], [2, 3], True, "code -4, outside [-3, 3]"),  # -2**(b-1): not narrow
        ([[127, -128]], 8, True, "code -128, outside [-127, 127]"),
        ([[0, 32768]], 16, True, "code 32768"),
        ([[-1, 0]], 4, False, "code -1, outside [0, 15]"),
        ([[0, 16]], [8, 4], False, "code 16, outside [0, 15]"),
    ],
)
def test_pack_refuses_codes_outside_the_bit_width(codes, bits, signed, needle):
    with pytest.raises(QuantflowError) as e:
        pack_tensor(np.array(codes), bits, 1.0, signed=signed, name="conv1")
    one_line_error(e, "tensor 'conv1'", needle)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"codes": np.zeros((2, 2)), "bits": 4}, "integer array"),
        ({"codes": np.zeros((2, 2), bool), "bits": 4}, "integer array"),
        ({"codes": np.int8(1), "bits": 4}, "1 to 8 dimensions"),
        ({"bits": [4, 0]}, "channel 1 has 0 bits"),
        ({"bits": 17}, "17 bits"),
        ({"bits": [4, 4, 4]}, "one per output channel"),
        ({"bits": [4.0, 4.0]}, "integer"),
        ({"scales": [1.0, np.nan]}, "channel 1 has scale nan"),
        ({"scales": [-1.0, 1.0]}, "finite and >= 0"),
        ({"scales": [1.0]}, "one per output channel"),
        ({"channel_axis": 2}, "out of range"),
        ({"channel_axis": (0, 0)}, "consecutive"),
        ({"channel_axis": "last"}, "channel_axis"),
        ({"signed": 1}, "signed must be"),
    ],
)
def test_pack_refuses_bad_arguments(kwargs, needle):
    args = {"codes": np.zeros((3, 2), np.int8), "bits": [4, 4], "scales": 1.0} | kwargs
    codes, bits, scales = args.pop("codes"), args.pop("bits"), args.pop("scales")
    with pytest.raises(QuantflowError) as e:
        pack_tensor(codes, bits, scales, name="dense", **args)
    one_line_error(e, "'dense'", needle)


def test_pack_file_refuses_bad_inputs():
    good = {"codes": np.zeros((2, 2), np.int8), "bits": 4, "scales": 1.0}
    with pytest.raises(QuantflowError, match="unknown keys"):
        pack_file({"a": good | {"bias": 1}})
    with pytest.raises(QuantflowError, match="missing keys"):
        pack_file({"a": {"codes": good["codes"]}})
    with pytest.raises(QuantflowError, match="not a list"):
        pack_file({"a": [1, 2]})
    with pytest.raises(QuantflowError, match="non-empty strings"):
        pack_file({"": good})
    with pytest.raises(QuantflowError, match="not a numpy array"):
        pack_file({"a": good}, arrays={"a/bias": [1, 2]})


# --------------------------------------------------------------------- files


def sample_file() -> PackedFile:
    rng = np.random.default_rng(5)
    conv_bits = rng.integers(2, 9, 8)
    dw_bits = rng.integers(1, 17, 8)
    fc_bits = np.array([2, 3, 8])
    return pack_file(
        {
            "conv": {
                "codes": random_codes(rng, (3, 3, 2, 8), conv_bits),
                "bits": conv_bits,
                "scales": rng.uniform(0.01, 1, 8),
            },
            "dw": {
                "codes": random_codes(rng, (3, 3, 4, 2), dw_bits, (-2, -1)),
                "bits": dw_bits,
                "scales": rng.uniform(0.01, 1, 8),
                "channel_axis": (-2, -1),
            },
            "fc": {
                "codes": random_codes(rng, (2, 3), fc_bits, signed=False),
                "bits": fc_bits,
                "scales": 0.5,
                "signed": False,
            },
        },
        arrays={
            "conv/bias": rng.integers(-1000, 1000, 8).astype(np.int32),
            "fc/bias": rng.normal(size=3).astype(np.float32),
        },
        meta={"model": "tiny", "seed": 1},
    )


def test_file_round_trip(tmp_path):
    packed = sample_file()
    path = tmp_path / "weights.qpack"
    written = save_packed(path, packed)
    assert written is packed
    loaded = load_packed(path)
    assert set(loaded.tensors) == {"conv", "dw", "fc"}
    for name, tensor in packed.tensors.items():
        got = loaded.tensors[name]
        assert got.shape == tensor.shape and got.channel_axes == tensor.channel_axes
        assert got.signed == tensor.signed and got.payload == tensor.payload
        assert got.bits.dtype == np.uint8 and np.array_equal(got.bits, tensor.bits)
        assert got.scales.dtype == np.float32 and np.array_equal(got.scales, tensor.scales)
        assert np.array_equal(loaded.codes(name), tensor.codes())
        assert np.array_equal(loaded.weights(name), tensor.weights())
    assert loaded.tensors["dw"].channel_axes == (2, 3)
    for name, array in packed.arrays.items():
        assert loaded.arrays[name].dtype == array.dtype
        assert np.array_equal(loaded.arrays[name], array)
    assert loaded.meta == {"model": "tiny", "seed": 1}
    # no temporary file left beside it (written atomically)
    assert [p.name for p in tmp_path.iterdir()] == ["weights.qpack"]


def test_file_holds_only_plain_values(tmp_path):
    path = tmp_path / "weights.qpack"
    save_packed(path, sample_file())
    blob = path.read_bytes()
    opcodes = {op.name for op, _, _ in pickletools.genops(blob)}
    assert not opcodes & {
        "GLOBAL",
        "STACK_GLOBAL",
        "INST",
        "OBJ",
        "REDUCE",
        "BUILD",
        "NEWOBJ",
        "NEWOBJ_EX",
    }
    raw = load_plain(path, what="packed weights file", rerun="adjustable")
    assert raw["format"] == FORMAT and raw["version"] == 1
    assert raw["bit_order"] == "lsb-first" and raw["layout"] == "channel-major"

    def walk(value):
        if isinstance(value, dict):
            for k, v in value.items():
                assert type(k) is str
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, np.ndarray):
            assert value.dtype.name in PLAIN_DTYPES
        else:
            assert type(value) in (str, int, float, bool, bytes, type(None))

    walk(raw)
    conv = raw["tensors"]["conv"]
    assert set(conv) == {"shape", "channel_axes", "signed", "bits", "scales", "payload"}
    assert conv["shape"] == [3, 3, 2, 8] and conv["channel_axes"] == [3]
    assert type(conv["payload"]) is bytes and conv["bits"].dtype == np.uint8
    assert conv["scales"].dtype == np.float32


def test_storage_accounting(tmp_path):
    packed = sample_file()
    storage = packed.storage()
    conv_bits = int(packed.tensors["conv"].bits.sum()) * 18
    dw_bits = int(packed.tensors["dw"].bits.sum()) * 9
    assert storage["payload_bits"] == conv_bits + dw_bits + 2 * 13
    assert storage["storage_words"] == storage["payload_bits"] / 32
    assert storage["payload_bytes"] == sum(math.ceil(b / 8) for b in (conv_bits, dw_bits, 26))
    assert storage["padding_bits"] == 8 * storage["payload_bytes"] - storage["payload_bits"]
    assert storage["padding_bits"] < 8 * 3
    assert storage["scale_bytes"] == 4 * (8 + 8 + 3) and storage["bits_bytes"] == 19
    assert storage["array_bytes"] == 4 * 8 + 4 * 3
    assert storage["values"] == 144 + 72 + 6
    path = tmp_path / "w.qpack"
    save_packed(path, packed)
    on_disk = file_storage(path)
    assert on_disk["file_bytes"] == path.stat().st_size
    assert 0 < on_disk["overhead_bytes"] < 2000  # names, shapes, pickle framing


# corruptions of the plain dict: (description, mutate(raw) -> None, words in the message)
def _set(path, value):
    def mutate(raw):
        target = raw
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value(target[path[-1]]) if callable(value) else value

    return mutate


def _delete(path):
    def mutate(raw):
        target = raw
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


CORRUPTIONS = [
    (
        "payload truncated",
        _set(["tensors", "conv", "payload"], lambda p: p[:-1]),
        ["'conv'", "payload has", "truncated or inconsistent"],
    ),
    (
        "payload too long",
        _set(["tensors", "conv", "payload"], lambda p: p + b"\0"),
        ["'conv'", "payload has"],
    ),
    ("payload empty", _set(["tensors", "fc", "payload"], b""), ["'fc'", "payload has 0"]),
    ("payload not bytes", _set(["tensors", "fc", "payload"], "abcd"), ["'fc'", "not bytes"]),
    ("bits raised", _set(["tensors", "fc", "bits"], lambda b: b + 2), ["'fc'", "payload has"]),
    (
        "bits zero",
        _set(["tensors", "fc", "bits"], np.array([0, 3, 8], np.uint8)),
        ["'fc'", "0 bits"],
    ),
    (
        "bits 17",
        _set(["tensors", "fc", "bits"], np.array([17, 3, 8], np.uint8)),
        ["'fc'", "17 bits"],
    ),
    ("bits int64", _set(["tensors", "fc", "bits"], np.array([2, 3, 8])), ["'fc'", "uint8"]),
    (
        "bits short",
        _set(["tensors", "fc", "bits"], np.array([2, 3], np.uint8)),
        ["'fc'", "shape (3,)"],
    ),
    ("bits a list", _set(["tensors", "fc", "bits"], [2, 3, 8]), ["'fc'", "uint8"]),
    ("scales float64", _set(["tensors", "fc", "scales"], np.ones(3)), ["'fc'", "float32"]),
    (
        "scales nan",
        _set(["tensors", "fc", "scales"], np.array([1, np.nan, 1], np.float32)),
        ["'fc'", "scale nan"],
    ),
    (
        "scales negative",
        _set(["tensors", "fc", "scales"], -np.ones(3, np.float32)),
        ["'fc'", "finite and >= 0"],
    ),
    ("shape changed", _set(["tensors", "conv", "shape"], [3, 3, 3, 8]), ["'conv'", "payload has"]),
    (
        "shape other channels",
        _set(["tensors", "conv", "shape"], [3, 3, 2, 7]),
        ["'conv'", "shape (7,)"],
    ),
    ("shape negative", _set(["tensors", "conv", "shape"], [3, 3, -2, 8]), ["'conv'", "shape"]),
    ("shape float", _set(["tensors", "conv", "shape"], [3, 3, 2.0, 8]), ["'conv'", "shape"]),
    ("shape empty", _set(["tensors", "conv", "shape"], []), ["'conv'", "shape"]),
    ("shape huge", _set(["tensors", "conv", "shape"], [2**39, 2**39, 1, 8]), ["'conv'", "at most"]),
    ("shape 9-d", _set(["tensors", "conv", "shape"], [1] * 5 + [3, 3, 2, 8]), ["'conv'", "1 to 8"]),
    ("shape a tuple", _set(["tensors", "conv", "shape"], (3, 3, 2, 8)), ["'conv'", "shape"]),
    (
        "axis out of range",
        _set(["tensors", "conv", "channel_axes"], [4]),
        ["'conv'", "out of range"],
    ),
    (
        "axes not consecutive",
        _set(["tensors", "dw", "channel_axes"], [1, 3]),
        ["'dw'", "consecutive"],
    ),
    ("axis negative", _set(["tensors", "conv", "channel_axes"], [-1]), ["'conv'", "axes"]),
    ("axes empty", _set(["tensors", "conv", "channel_axes"], []), ["'conv'", "axis"]),
    ("signed an int", _set(["tensors", "conv", "signed"], 1), ["'conv'", "signed"]),
    ("tensor key missing", _delete(["tensors", "conv", "scales"]), ["'conv'", "keys"]),
    ("tensor key extra", _set(["tensors", "conv", "bias"], b""), ["'conv'", "keys"]),
    ("tensor not a dict", _set(["tensors", "conv"], [1]), ["'conv'", "keys"]),
    ("format tag", _set(["format"], "other"), ["not a quantflow packed-weights file"]),
    ("version", _set(["version"], 2), ["version 2"]),
    ("bit order", _set(["bit_order"], "msb-first"), ["bit order"]),
    ("key missing", _delete(["meta"]), ["keys"]),
    ("tensors a list", _set(["tensors"], []), ["'tensors'"]),
    ("array not an array", _set(["arrays", "fc/bias"], [1.0]), ["'fc/bias'"]),
]


@pytest.mark.parametrize(
    "mutate, needles", [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS]
)
def test_load_refuses_inconsistent_files(tmp_path, mutate, needles):
    raw = to_plain_dict(sample_file())
    mutate(raw)
    path = tmp_path / "bad.qpack"
    save_plain(raw, path)
    with pytest.raises(QuantflowError) as e:
        load_packed(path)
    one_line_error(e, str(path), "snakemake --cores all --forcerun adjustable", *needles)


def test_load_refuses_codes_the_writer_never_makes(tmp_path):
    """Payloads of the right length with nonzero padding, or with the two's complement
    pattern of -2**(b-1) (outside the narrow range)."""
    raw = to_plain_dict(sample_file())
    fc = raw["tensors"]["fc"]  # 26 bits: the last byte's 6 high bits are padding
    fc["payload"] = fc["payload"][:-1] + bytes([fc["payload"][-1] | 0x80])
    save_plain(raw, tmp_path / "pad.qpack")
    with pytest.raises(QuantflowError) as e:
        load_packed(tmp_path / "pad.qpack")
    one_line_error(e, "'fc'", "padding bits")

    tensor = pack_tensor(np.array([[1, -1], [0, 0]]), [2, 4], [1.0, 1.0])
    raw = to_plain_dict(pack_file({"k": tensor}))
    # channel 0 at 2 bits: codes 1, 0 -> bits 1,0 | 0,0; set value 1 to 0b10 (= -2)
    payload = bytearray(raw["tensors"]["k"]["payload"])
    payload[0] = (payload[0] & ~0b1100) | 0b1000
    raw["tensors"]["k"]["payload"] = bytes(payload)
    save_plain(raw, tmp_path / "narrow.qpack")
    with pytest.raises(QuantflowError) as e:
        load_packed(tmp_path / "narrow.qpack", rerun="adjustable_pack")
    one_line_error(e, "'k'", "channel 0 holds code -2", "--forcerun adjustable_pack")


def test_load_refuses_truncated_foreign_and_missing_files(tmp_path):
    path = tmp_path / "w.qpack"
    save_packed(path, sample_file())
    blob = path.read_bytes()
    for cut in (len(blob) // 2, len(blob) - 1, 3):
        (tmp_path / "cut.qpack").write_bytes(blob[:cut])
        with pytest.raises(QuantflowError) as e:
            load_packed(tmp_path / "cut.qpack")
        one_line_error(e, "cut.qpack", "adjustable")
    # a pickle that names code: refused by load_plain, nothing executed
    (tmp_path / "evil.qpack").write_bytes(pickle.dumps(Path("x")))
    with pytest.raises(QuantflowError) as e:
        load_packed(tmp_path / "evil.qpack")
    one_line_error(e, "nothing was executed", "adjustable")
    # a plain file of another kind (e.g. weights.pickle)
    save_plain({"conv": np.zeros(3)}, tmp_path / "weights.pickle")
    with pytest.raises(QuantflowError) as e:
        load_packed(tmp_path / "weights.pickle")
    one_line_error(e, "not a quantflow packed-weights file")
    save_plain([1, 2], tmp_path / "list.qpack")
    with pytest.raises(QuantflowError, match="not a quantflow packed-weights file"):
        load_packed(tmp_path / "list.qpack")
    with pytest.raises(QuantflowError, match="cannot read"):
        load_packed(tmp_path / "missing.qpack")
