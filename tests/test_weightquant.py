"""Weight-only quantization: exact bin and fixed-point semantics, properties, checkpoints."""

import copy

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quantflow.errors import QuantflowError
from quantflow.weightquant import (
    ALGORITHMS,
    bin_quantize,
    fixed_point_quantize,
    quantize_weights,
    relative_error,
)

F32 = np.float32


def f32(*values):
    return np.array(values, dtype=F32)


# ------------------------------------------------------------------ reference semantics


def reference_bins(x, bits):
    """The bin of each value by the definition: the last k < n with x >= lo + k * width
    (float64 edges), searched among k0 - 3 .. k0 + 3 around a float64 estimate k0."""
    x64 = np.asarray(x, dtype=np.float64).ravel()
    lo, hi = float(x64.min()), float(x64.max())
    n = 2**bits
    width = (hi - lo) / n
    k0 = np.floor((x64 - lo) / width)
    candidates = np.clip(k0[:, None] + np.arange(-3, 4), 0, n - 1)
    ok = x64[:, None] >= lo + candidates * width
    return np.where(ok, candidates, 0).max(axis=1), lo, hi, width


def reference_bin_quantize(x, bits):
    if x.min() == x.max():
        return x.copy()
    k, lo, hi, width = reference_bins(x, bits)
    scale = max(abs(lo), abs(hi)) * float(F32(2**bits / (hi - lo))) if width >= 2**-110 else 0
    if x.dtype == np.float32 and bits <= 16 and width >= 2**-110 and scale <= 2**15 - 1:
        # centres in float32, as documented
        c = k.astype(F32) * F32(width) + F32(lo + 0.5 * width)
    else:
        c = (lo + 0.5 * width + k * width).astype(x.dtype)
    return np.clip(c, x.dtype.type(lo), x.dtype.type(hi)).reshape(x.shape)


def reference_fixed(x, bits):
    x64 = np.asarray(x, dtype=np.float64)
    m = float(np.max(np.abs(x64)))
    int_bits = 0 if m < 1 else int(np.floor(np.log2(m))) + 1
    step = 2.0 ** (int_bits - (bits - 1))
    q = np.clip(np.round(x64 / step), -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) * step
    return q.astype(x.dtype), step


def ceil32(value: float) -> np.float32:
    """The smallest float32 not below a float64 value."""
    r = F32(value)
    return np.nextafter(r, F32(np.inf)) if float(r) < value else r


# ------------------------------------------------------------------ bin: exact cases


def test_bin_edges_belong_to_the_upper_bin_and_the_last_bin_is_closed():
    x = f32(0, 0.25, 0.5, 0.75, 1.0)
    np.testing.assert_array_equal(bin_quantize(x, 2), f32(0.125, 0.375, 0.625, 0.875, 0.875))


def test_bin_centres_just_below_and_above_edges():
    below = [np.nextafter(F32(e), F32(-1)) for e in (0.25, 0.5, 0.75, 1.0)]
    x = np.array([0.0, *below, 1.0], dtype=F32)
    np.testing.assert_array_equal(bin_quantize(x, 2), f32(0.125, 0.125, 0.375, 0.625, 0.875, 0.875))


def test_bin_one_bit_splits_at_the_midpoint():
    x = f32(-1, -0.5, -1e-7, 0, 0.5, 1)
    np.testing.assert_array_equal(bin_quantize(x, 1), f32(-0.5, -0.5, -0.5, 0.5, 0.5, 0.5))


def test_bin_32_bits_keeps_dyadic_values_in_their_own_bins():
    x = np.array([0.0, 0.5, 1.0, 0.25], dtype=np.float64)
    half_bin = 2.0**-33
    np.testing.assert_array_equal(
        bin_quantize(x, 32), [half_bin, 0.5 + half_bin, 1.0 - half_bin, 0.25 + half_bin]
    )


@pytest.mark.parametrize(
    "lo, hi, bits",
    [
        (-1.0, 0.3, 3),
        (-0.37, 0.41, 8),
        (0.1, 0.7, 5),
        (-3.3, -1.1, 12),
        (1000.0, 1001.0, 8),
        (-0.05, 0.05, 16),
    ],
)
def test_bin_is_exact_on_both_sides_of_every_edge(lo, hi, bits):
    rng = np.random.default_rng(bits)
    lo32, hi32 = F32(lo), F32(hi)
    n = 2**bits
    width = (float(hi32) - float(lo32)) / n
    ks = np.arange(1, n) if n <= 256 else rng.integers(1, n, 300)
    edges = [ceil32(float(lo32) + k * width) for k in ks]
    near = [
        v for e in edges for v in (e, np.nextafter(e, F32(-np.inf)), np.nextafter(e, F32(np.inf)))
    ]
    body = rng.uniform(lo, hi, 1000).astype(F32)
    x = np.clip(np.array([lo32, hi32, *near, *body], dtype=F32), lo32, hi32)
    np.testing.assert_array_equal(bin_quantize(x, bits), reference_bin_quantize(x, bits))
    # the same with float64 values (the float64 path)
    x64 = x.astype(np.float64)
    np.testing.assert_array_equal(bin_quantize(x64, bits), reference_bin_quantize(x64, bits))


@pytest.mark.parametrize(
    "lo, hi, bits", [(-1.0, 0.3, 6), (-0.37, 0.41, 10), (0.1, 0.7, 20), (-3.3, -1.1, 32)]
)
def test_bin_float64_values_exactly_on_float64_edges(lo, hi, bits):
    n = 2**bits
    width = (hi - lo) / n
    ks = np.unique(
        np.concatenate([np.arange(1, min(n, 2049)), np.random.default_rng(0).integers(1, n, 2000)])
    )
    edges = lo + ks.astype(np.float64) * width
    x = np.concatenate([[lo, hi], edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf)])
    x = np.clip(x, lo, hi)
    np.testing.assert_array_equal(bin_quantize(x, bits), reference_bin_quantize(x, bits))


def test_bin_constant_tensor_is_unchanged():
    x = np.full((3, 4), 0.7, dtype=F32)
    q = bin_quantize(x, 4)
    np.testing.assert_array_equal(q, x)
    assert q is not x


def test_bin_keeps_shape_and_works_on_non_contiguous_input():
    x = np.linspace(-1, 1, 60, dtype=F32).reshape(6, 10)[:, ::2]
    q = bin_quantize(x, 3)
    assert q.shape == x.shape
    np.testing.assert_array_equal(q, reference_bin_quantize(np.ascontiguousarray(x), 3))


def test_bin_threads_give_the_same_result():
    x = np.random.default_rng(0).standard_normal(300_001).astype(F32)
    np.testing.assert_array_equal(bin_quantize(x, 8, threads=3), bin_quantize(x, 8))
    np.testing.assert_array_equal(fixed_point_quantize(x, 8, threads=3), fixed_point_quantize(x, 8))


def test_bin_large_tensor_matches_the_reference():
    x = (np.random.default_rng(1).standard_normal(200_000) * 0.05).astype(F32)
    for bits in (2, 8, 16):
        np.testing.assert_array_equal(bin_quantize(x, bits), reference_bin_quantize(x, bits))


# ------------------------------------------------------------------ fixed point: exact cases


def test_fixed_point_rounds_to_the_step_below_one():
    # m < 1: no integer bits, 3 fraction bits at 4 bits: step 1/8, range [-1, 7/8]
    x = f32(0.3, -0.3, 0.0625, -1 / 16 - 1e-3, 0.5)
    np.testing.assert_array_equal(fixed_point_quantize(x, 4), f32(0.25, -0.25, 0, -0.125, 0.5))


def test_fixed_point_ties_go_to_even():
    x = f32(0.0625, 0.1875, -0.0625, 0.5)  # 0.5, 1.5, -0.5 steps of 1/8
    np.testing.assert_array_equal(fixed_point_quantize(x, 4), f32(0, 0.25, 0, 0.5))


def test_fixed_point_saturates_at_the_top_of_the_range():
    # m = 0.99 -> I = 0, step 1/8, largest value 7/8: 0.99 rounds to 8/8 and saturates
    np.testing.assert_array_equal(fixed_point_quantize(f32(0.99, -0.5), 4), f32(0.875, -0.5))
    # m = 1.9 -> I = 1, step 1/4, range [-2, 1.75]
    np.testing.assert_array_equal(fixed_point_quantize(f32(1.9, -1.999), 4), f32(1.75, -2.0))
    # m = 1 exactly needs one integer bit
    np.testing.assert_array_equal(fixed_point_quantize(f32(1.0, 0.3), 4), f32(1.0, 0.25))


def test_fixed_point_coarse_steps_for_large_values():
    # m = 127 -> I = 7 > bits - 1 = 3, so F = -4: step 16, range [-128, 112]
    np.testing.assert_array_equal(
        fixed_point_quantize(f32(127, -100, 7, 9), 4), f32(112, -96, 0, 16)
    )


def test_fixed_point_one_bit_keeps_only_the_sign():
    np.testing.assert_array_equal(fixed_point_quantize(f32(0.7, -0.3, -0.9), 1), f32(0, 0, -1))
    np.testing.assert_array_equal(fixed_point_quantize(f32(3.0, -2.5), 1), f32(0, -4))


def test_fixed_point_32_bits():
    x = np.array([1 - 2.0**-40, 0.5, 1e-9], dtype=np.float64)
    expected = [(2.0**31 - 1) * 2.0**-31, 0.5, 2 * 2.0**-31]
    np.testing.assert_array_equal(fixed_point_quantize(x, 32), expected)
    x32 = f32(0.99999994, -0.75, 1e-9)
    np.testing.assert_array_equal(fixed_point_quantize(x32, 32), reference_fixed(x32, 32)[0])


def test_fixed_point_all_zero_is_unchanged():
    x = np.zeros((2, 3), dtype=F32)
    np.testing.assert_array_equal(fixed_point_quantize(x, 8), x)


def test_fixed_point_matches_the_reference_on_many_values():
    rng = np.random.default_rng(2)
    for scale in (1e-3, 0.3, 1.0, 7.5, 1e4):
        x = (rng.standard_normal(5000) * scale).astype(F32)
        for bits in (1, 2, 5, 8, 16, 24, 25, 32):
            np.testing.assert_array_equal(
                fixed_point_quantize(x, bits), reference_fixed(x, bits)[0]
            )


# ------------------------------------------------------------------ both: refusals and dtypes


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("bits", [0, 33, -1, 2.5, "8", True, None])
def test_bad_bits_are_refused(algorithm, bits):
    with pytest.raises(QuantflowError, match="bits"):
        ALGORITHMS[algorithm](f32(0, 1), bits)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_with_the_tensor_name(algorithm, bad):
    with pytest.raises(QuantflowError, match="conv1/kernel.*NaN or infinite"):
        ALGORITHMS[algorithm](f32(0, 1, bad), 8, name="conv1/kernel")


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_integer_tensors_are_refused(algorithm):
    with pytest.raises(QuantflowError, match="dtype int"):
        ALGORITHMS[algorithm](np.arange(4), 8)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtype_and_shape_are_preserved(algorithm, dtype):
    x = np.linspace(-2, 3, 24).astype(dtype).reshape(2, 3, 4)
    q = ALGORITHMS[algorithm](x, 4)
    assert q.dtype == dtype and q.shape == x.shape
    empty = ALGORITHMS[algorithm](np.zeros((0, 3), dtype), 4)
    assert empty.dtype == dtype and empty.shape == (0, 3)


def test_relative_error():
    assert relative_error(f32(3, 4), f32(3, 4)) == 0.0
    assert relative_error(f32(3, 4), f32(0, 0)) == pytest.approx(1.0)
    assert relative_error(f32(3, 4), f32(3, 3)) == pytest.approx(0.2)
    assert relative_error(f32(0, 0), f32(0, 0)) == 0.0
    assert relative_error(f32(0, 0), f32(0, 1)) == np.inf


# ------------------------------------------------------------------ properties

finite32 = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
tensors = hnp.arrays(F32, st.integers(1, 300), elements=finite32)


@settings(max_examples=150, deadline=None)
@given(tensors, st.integers(1, 16))
@example(f32(1e-45, 0), 1)  # subnormal range: float32 centres would be 0
@example(f32(1000, 1000.0001, 1000.5), 16)  # far from zero: bins finer than float32
def test_bin_values_stay_in_range_and_within_half_a_bin(x, bits):
    q = bin_quantize(x, bits)
    lo, hi = x.min(), x.max()
    assert q.dtype == F32 and q.shape == x.shape
    assert np.all(q >= lo) and np.all(q <= hi)
    if lo < hi:
        half = (float(hi) - float(lo)) / 2**bits / 2
        tolerance = 1e-6 * max(abs(float(lo)), abs(float(hi)))
        assert np.all(np.abs(x.astype(np.float64) - q) <= half + tolerance)
        # values of one bin get one centre, and bins follow the definition
        k = reference_bins(x, bits)[0]
        for b in np.unique(k):
            assert len(np.unique(q[k == b])) == 1


@settings(max_examples=150, deadline=None)
@given(tensors, st.integers(1, 16), st.data())
def test_bin_matches_the_definition_also_next_to_edges(x, bits, data):
    lo, hi = float(x.min()), float(x.max())
    if lo < hi:  # add float32 values on and next to some edges (inside the range)
        width = (hi - lo) / 2**bits
        ks = data.draw(st.lists(st.integers(1, 2**bits - 1), max_size=8))
        extra = [
            v
            for k in ks
            for e in [ceil32(lo + k * width)]
            for v in (e, np.nextafter(e, F32(-np.inf)))
        ]
        x = np.clip(np.concatenate([x, np.array(extra, dtype=F32)]), F32(lo), F32(hi))
    np.testing.assert_array_equal(bin_quantize(x, bits), reference_bin_quantize(x, bits))


@settings(max_examples=150, deadline=None)
@given(tensors, st.integers(1, 16))
def test_fixed_point_within_half_a_step_inside_the_representable_range(x, bits):
    q = fixed_point_quantize(x, bits)
    assert q.dtype == F32 and q.shape == x.shape
    np.testing.assert_array_equal(q, reference_fixed(x, bits)[0])
    step = reference_fixed(x, bits)[1]
    low, high = -(2.0 ** (bits - 1)) * step, (2.0 ** (bits - 1) - 1) * step
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    assert np.all((q64 >= low) & (q64 <= high))
    assert np.all(np.round(q64 / step) == q64 / step)  # on the grid
    inside = (x64 >= low) & (x64 <= high)
    assert np.all(np.abs(x64 - q64)[inside] <= step / 2 * (1 + 1e-12))
    assert np.all(q64[x64 > high] == high)  # saturated


# ------------------------------------------------------------------ checkpoints


def checkpoint(rng=None):
    """A weights dict as extract_weights makes it, without Keras."""
    rng = rng or np.random.default_rng(0)
    layers = {
        "conv": {"kernel": rng.standard_normal((3, 3, 1, 8)).astype(F32)},
        "bn": {
            role: rng.standard_normal(8).astype(F32) + (1.0 if role.endswith("variance") else 0.0)
            for role in ("gamma", "beta", "moving_mean", "moving_variance")
        },
        "dense": {
            "kernel": rng.standard_normal((8, 4)).astype(F32),
            "bias": rng.standard_normal(4).astype(F32),
        },
    }
    trainable = {
        f"{layer}/{role}": not role.startswith("moving")
        for layer, roles in layers.items()
        for role in roles
    }
    classes = {"conv": "Conv2D", "bn": "BatchNormalization", "dense": "Dense"}
    metadata = {
        "architecture": "{}",
        "model_name": "m",
        "input_shape": [4, 4, 1],
        "num_classes": 4,
        "versions": {},
        "layer_classes": classes,
        "trainable": trainable,
    }
    return {"format": "quantflow-weights/1", "metadata": metadata, "layers": layers}


def flat(data):
    return {
        f"{layer}/{role}": a for layer, roles in data["layers"].items() for role, a in roles.items()
    }


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_quantize_weights_quantizes_every_trainable_variable(algorithm):
    data = checkpoint()
    before = copy.deepcopy(data)
    new, errors = quantize_weights(data, algorithm, 3)
    assert set(errors["per_variable"]) == {
        "conv/kernel",
        "bn/gamma",
        "bn/beta",
        "dense/kernel",
        "dense/bias",
    }
    for key, a in flat(data).items():
        q = flat(new)[key]
        if key.startswith("bn/moving"):
            np.testing.assert_array_equal(q, a)
        else:
            np.testing.assert_array_equal(q, ALGORITHMS[algorithm](a, 3))
            assert errors["per_variable"][key] == pytest.approx(relative_error(a, q))
    assert errors["min"] <= errors["mean"] <= errors["max"]
    assert errors["algorithm"] == algorithm and errors["bits"] == 3
    assert new["metadata"]["quantization"] == {
        "algorithm": algorithm,
        "bits": 3,
        "keep_batchnorm_float": False,
        "keep_bias_float": False,
        "quantized": sorted(errors["per_variable"]),
    }
    assert all(np.array_equal(a, flat(before)[k]) for k, a in flat(data).items())
    assert "quantization" not in data["metadata"]


@settings(max_examples=30, deadline=None)
@given(
    st.booleans(),
    st.booleans(),
    st.sampled_from(sorted(ALGORITHMS)),
    st.integers(1, 16),
    st.integers(0, 2**32 - 1),
)
def test_quantize_weights_switches_keep_float(keep_bn, keep_bias, algorithm, bits, seed):
    data = checkpoint(np.random.default_rng(seed))
    new, errors = quantize_weights(
        data, algorithm, bits, keep_batchnorm_float=keep_bn, keep_bias_float=keep_bias
    )
    for key, a in flat(data).items():
        kept = (
            key.startswith("bn/moving")
            or (keep_bn and key.startswith("bn/"))
            or (keep_bias and key.endswith("/bias"))
        )
        assert (key not in errors["per_variable"]) == kept
        if kept:
            np.testing.assert_array_equal(flat(new)[key], a)
        assert flat(new)[key].dtype == a.dtype
    assert errors["min"] <= errors["mean"] <= errors["max"]


def test_quantize_weights_refuses_bad_requests():
    with pytest.raises(QuantflowError, match="unknown weight quantization algorithm 'kmeans'"):
        quantize_weights(checkpoint(), "kmeans", 8)
    with pytest.raises(QuantflowError, match="bits"):
        quantize_weights(checkpoint(), "bin", 0)
    with pytest.raises(QuantflowError, match="not a quantflow weights file"):
        quantize_weights({"layers": {}}, "bin", 8)
    bad = checkpoint()
    bad["layers"]["dense"]["kernel"] = bad["layers"]["dense"]["kernel"].copy()
    bad["layers"]["dense"]["kernel"][0, 0] = np.nan
    with pytest.raises(QuantflowError, match="dense/kernel"):
        quantize_weights(bad, "fixed", 8)


def test_packed_size_counts_quantized_values_at_their_bit_width():
    from quantflow.weightquant import packed_size_bytes

    data = {
        "format": "quantflow-weights/1",
        "metadata": {"trainable": {"d/kernel": True, "d/bias": True, "bn/moving_mean": False},
                     "layer_classes": {"d": "Dense", "bn": "BatchNormalization"}},
        "layers": {"d": {"kernel": np.linspace(-1, 1, 100, dtype=np.float32).reshape(10, 10),
                         "bias": np.ones(10, np.float32)},
                   "bn": {"moving_mean": np.zeros(10, np.float32)}},
    }
    assert packed_size_bytes(data) == 120 * 4  # not quantized: all float32
    quantized, _ = quantize_weights(data, "bin", 4, keep_bias_float=True)
    # kernel: 100 values x 4 bits = 50 bytes + 8 bytes of parameters; bias and moving mean float32
    assert packed_size_bytes(quantized) == 50 + 8 + 10 * 4 + 10 * 4
    quantized, _ = quantize_weights(data, "fixed", 3)
    assert packed_size_bytes(quantized) == (38 + 8) + (4 + 8) + 10 * 4  # ceil(300/8), ceil(30/8)
