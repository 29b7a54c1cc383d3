"""Weight-only quantization: exact bin and fixed-point semantics, properties, checkpoints."""

import copy
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quantflow.errors import QuantflowError
from quantflow.quant.weightonly.apply import (
    ALGORITHMS,
    quantize_weights,
    relative_error,
    relative_error_pct,
)
from quantflow.quant.weightonly.fixed import (
    FixedPointFormat,
    fixed_point_format,
    fixed_point_quantize,
    fixed_point_quantize_with_format,
)
from quantflow.quant.weightonly.bin import _Grid, bin_quantize

F32 = np.float32


def f32(*values):
    return np.array(values, dtype=F32)


# ------------------------------------------------------------------ reference semantics


def reference_bins(x, bits):
    """The bin of each value by the definition: the last i < n with x >= lo + i * width
    (float64 edges): the number of edges e_1 .. e_{n-1} not above x (up to 2**20 bins),
    else searched among i0 - 3 .. i0 + 3 around a float64 estimate i0."""
    x64 = np.asarray(x, dtype=np.float64).ravel()
    lo, hi = float(x64.min()), float(x64.max())
    n = 2**bits
    width = (hi - lo) / n
    if n <= 2**20:
        edges = lo + np.arange(1, n, dtype=np.float64) * width
        return np.searchsorted(edges, x64, side="right").astype(np.float64), lo, hi, width
    k0 = np.floor((x64 - lo) / width)
    candidates = np.clip(k0[:, None] + np.arange(-3, 4), 0, n - 1)
    ok = x64[:, None] >= lo + candidates * width
    return np.where(ok, candidates, 0).max(axis=1), lo, hi, width


def reference_bin_quantize(x, bits):
    """By the definition: centre = min + (i + 0.5) * (max - min) / 2**bits in float64, then
    rounded once to x's dtype (no clipping: the tests' ranges never need it)."""
    if x.min() == x.max():
        return x.copy()
    i, lo, hi, width = reference_bins(x, bits)
    return (lo + (i + 0.5) * width).astype(x.dtype).reshape(x.shape)


def reference_fixed(x, bits):
    """The reference's fixed point (with the magnitude change), in exact rational
    arithmetic: (dequantized values in x's dtype, (k, I, F, sign)). For float32 tensors
    with max|x| >= 1e-12 (or 0) the float64 implementation must match it exactly."""
    values = [Fraction(float(v)) for v in np.asarray(x).ravel()]
    m = max(abs(v) for v in values)
    sign = any(v < 0 for v in values)
    if m == 0:
        return x.copy(), (0, 0, bits - sign, sign)
    k = 0
    while m * 10**k < 1:
        k += 1
    integer_bits = math.floor(m * 10**k).bit_length()  # floor(log2(int part)) + 1
    fractional_bits = bits - integer_bits - sign
    top = 2 ** (bits - sign) - 1
    scale = Fraction(10**k) * Fraction(2) ** fractional_bits
    q = [max(-top, min(top, round(v * scale))) for v in values]  # round: ties to even
    dequantized = np.array([float(Fraction(i) / scale) for i in q])  # float(): rounded once
    return (
        dequantized.astype(x.dtype).reshape(np.shape(x)),
        (k, integer_bits, fractional_bits, sign),
    )


def glorot_kernel(seed=0):
    """A Glorot-uniform 3x3x64x64 kernel: limit sqrt(6 / (576 + 576)) = 0.0722."""
    limit = math.sqrt(6 / (3 * 3 * 64 + 3 * 3 * 64))
    return np.random.default_rng(seed).uniform(-limit, limit, (3, 3, 64, 64)).astype(F32)


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


@pytest.mark.parametrize("bits", range(1, 17))
def test_bin_centres_are_the_float64_centre_rounded_once(bits):
    # Random tensors of many scales, centred on zero and off it, in three dtypes; values
    # on and next to float32 edges too. Bins and centres must be the definition's, bit for
    # bit (the reference computes the centre in float64 and casts it once).
    rng = np.random.default_rng(bits)
    fast = 0
    for dtype in (np.float32, np.float64, np.float16):
        for scale in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4):
            if dtype == np.float16 and not 1e-2 <= scale <= 1e3:
                continue
            for offset in (0.0, 3.0 * scale):
                size = max(3000, 2**bits)  # at least one value per bin: a centre table
                x = (rng.standard_normal(size) * scale + offset).astype(dtype)
                lo, hi = float(x.min()), float(x.max())
                if dtype == np.float32:
                    width = (hi - lo) / 2**bits
                    ks = rng.integers(1, 2**bits, 50) if bits > 1 else [1]
                    near = [
                        v
                        for k in ks
                        for e in [ceil32(lo + k * width)]
                        for v in (e, np.nextafter(e, F32(-np.inf)), np.nextafter(e, F32(np.inf)))
                    ]
                    x = np.clip(np.concatenate([x, np.array(near, F32)]), F32(lo), F32(hi))
                    grid = _Grid(lo, hi, 2**bits, width, x.dtype, x.size)
                    fast += grid.float32
                q = bin_quantize(x, bits)
                np.testing.assert_array_equal(q, reference_bin_quantize(x, bits))
                assert q.dtype == dtype
    # most float32 cases go through the float32 fast path (not at 16 bits: max|x| * n /
    # (max - min) is then about 2**15, at the limit)
    assert fast >= 15 or bits == 16


# ------------------------------------------------------------------ fixed point: exact cases


def fmt(k, integer_bits, fractional_bits, sign, bits):
    return FixedPointFormat(bits, k, integer_bits, fractional_bits, sign)


def test_fixed_point_values_below_one_worked_by_hand():
    x = f32(0.3, -0.25, 0.1)
    # m = 0.3 < 1: decimal shift k = 1 (0.3 * 10 = 3 >= 1). Integer part of the shifted
    # maximum: 3 -> I = floor(log2 3) + 1 = 2. A negative value -> sign bit. At 4 bits:
    # F = 4 - 2 - 1 = 1, magnitudes up to 2**3 - 1 = 7 (in steps of 1 / (10 * 2**1) = 0.05).
    # q = round(x * 10 * 2) = 6, -5, 2 (float32 0.3 * 20 = 6.0000002): all within 7, so
    # q / 20 = 0.3, -0.25, 0.1: the tensor is unchanged.
    q, f = fixed_point_quantize_with_format(x, 4)
    assert f == fmt(1, 2, 1, True, 4) and f.max_integer == 7
    np.testing.assert_array_equal(q, x)
    # 3 bits: F = 0, magnitudes up to 3, steps of 0.1: q = round(x * 10) = 3, -2 (-2.5 is a
    # tie: to even), 1 -> 0.3, -0.2, 0.1
    q, f = fixed_point_quantize_with_format(x, 3)
    assert f == fmt(1, 2, 0, True, 3)
    np.testing.assert_array_equal(q, f32(0.3, -0.2, 0.1))
    # 2 bits: F = -1, magnitudes up to 1, steps of 0.2: round(x * 5) = round(1.5000001) = 2
    # -> saturated to 1; round(-1.25) = -1; round(0.50000001) = 1 -> 0.2, -0.2, 0.2
    q, f = fixed_point_quantize_with_format(x, 2)
    assert f == fmt(1, 2, -1, True, 2)
    np.testing.assert_array_equal(q, f32(0.2, -0.2, 0.2))
    # 1 bit: the sign bit takes it, no magnitude bit is left: all zero
    q, f = fixed_point_quantize_with_format(x, 1)
    assert f == fmt(1, 2, -2, True, 1) and f.max_integer == 0
    np.testing.assert_array_equal(q, f32(0, 0, 0))
    # without a negative value there is no sign bit: at 4 bits F = 2, magnitudes up to 15,
    # steps of 0.025; at 2 bits F = 0, up to 3: round(2.5) = 2 (tie to even) -> 0.2
    np.testing.assert_array_equal(fixed_point_quantize(f32(0.3, 0.25, 0.1), 4), f32(0.3, 0.25, 0.1))
    assert fixed_point_quantize_with_format(f32(0.3, 0.25, 0.1), 4)[1] == fmt(1, 2, 2, False, 4)
    np.testing.assert_array_equal(fixed_point_quantize(f32(0.3, 0.25, 0.1), 2), f32(0.3, 0.2, 0.1))


def test_fixed_point_values_below_a_hundredth():
    x = f32(0.004, -0.0072, 0.0005)
    # m = 0.0072: k = 3 (7.2), int part 7 -> I = 3, sign bit; 6 bits: F = 6 - 3 - 1 = 2,
    # magnitudes up to 31 in steps of 1 / 4000. q = round(x * 4000) = 16, -29 (-28.8), 2
    # -> 0.004, -0.00725, 0.0005
    q, f = fixed_point_quantize_with_format(x, 6)
    assert f == fmt(3, 3, 2, True, 6)
    np.testing.assert_array_equal(q, f32(0.004, -0.00725, 0.0005))
    # 4 bits: F = 0, magnitudes up to 7 in steps of 0.001: 4, -7 and 1 (float32 0.0005 is
    # 0.000500000024, so 0.50000002 steps: not a tie)
    np.testing.assert_array_equal(fixed_point_quantize(x, 4), f32(0.004, -0.007, 0.001))
    # an exact tie goes to even: 0.0025 * 1000 = 2.5 exactly in float64? float32 0.0025 is
    # 0.00249999994, so 2 either way; 0.375 / 100 is no float either. Ties are tested with
    # dyadic values (-0.25 above, -0.5 below).
    # far below: m = 3e-7 -> k = 7, I = 2; 8 bits: F = 5, steps of 1 / 320e6
    tiny = f32(3e-7, -1e-7, 2e-9)
    q, f = fixed_point_quantize_with_format(tiny, 8)
    assert f == fmt(7, 2, 5, True, 8)
    np.testing.assert_array_equal(q, f32(96 / 320e6, -32 / 320e6, 1 / 320e6))


def test_fixed_point_mixed_signs_and_saturation_of_both_signs():
    # m = 5 >= 1: no shift, I = 3, sign bit; 5 bits: F = 1, magnitudes up to 15, steps 0.5:
    # round(2x) = 5 (5.4), -3 (-2.6), 1 (1.2), 10
    x = f32(2.7, -1.3, 0.6, 5.0)
    q, f = fixed_point_quantize_with_format(x, 5)
    assert f == fmt(0, 3, 1, True, 5)
    np.testing.assert_array_equal(q, f32(2.5, -1.5, 0.5, 5.0))
    # m = 7.9: I = 3, 4 bits: F = 0, magnitudes up to 7: both 8 and -8 saturate (the
    # reference would leave -8)
    np.testing.assert_array_equal(fixed_point_quantize(f32(7.9, -7.9, 0.4), 4), f32(7, -7, 0))
    # m = 127: I = 7 > 4 - 1, so F = -4: steps of 16, magnitudes up to 7 * 16 = 112
    np.testing.assert_array_equal(
        fixed_point_quantize(f32(127, -100, 7, 9), 4), f32(112, -96, 0, 16)
    )


def test_fixed_point_all_negative_and_a_largest_negative():
    # m = 0.9 from the most negative value: k = 1, int part 8 (0.9f * 10 = 8.9999998) ->
    # I = 4; sign bit; 4 bits: F = -1, steps of 0.2, magnitudes up to 7:
    # round(x * 5) = -2 (-2.5: tie to even), -0 (-0.1), -4 (-4.4999999) -> -0.4, 0, -0.8
    x = f32(-0.5, -0.02, -0.9)
    q, f = fixed_point_quantize_with_format(x, 4)
    assert f == fmt(1, 4, -1, True, 4)
    np.testing.assert_array_equal(q, f32(-0.4, 0, -0.8))
    # the largest magnitude, not the signed maximum (0.5), sets the shift and I: -3 and 0.5
    # are exact at 4 bits (k = 0, I = 2, F = 1)
    q, f = fixed_point_quantize_with_format(f32(-3.0, 0.5), 4)
    assert f == fmt(0, 2, 1, True, 4)
    np.testing.assert_array_equal(q, f32(-3.0, 0.5))


def test_fixed_point_constant_tensors_are_quantized_like_any_other():
    # 0.7f * 10 = 6.9999999: int part 6 -> I = 3, no sign; 4 bits: F = 1, q = 14 -> 0.7
    x = np.full((3, 4), 0.7, dtype=F32)
    q, f = fixed_point_quantize_with_format(x, 4)
    assert f == fmt(1, 3, 1, False, 4)
    np.testing.assert_array_equal(q, x)
    assert q is not x
    # 0.99 * 10 = 9.9: I = 4, F = 0, q = round(9.9) = 10 -> 1.0: not representable, moved
    np.testing.assert_array_equal(fixed_point_quantize(np.full(5, 0.99, F32), 4), np.ones(5, F32))
    # negative, 1 bit: no magnitude bit -> zero
    np.testing.assert_array_equal(fixed_point_quantize(np.full(5, -0.5, F32), 1), np.zeros(5, F32))


def test_fixed_point_exactly_representable_values_are_unchanged():
    # each value is q / (10**k * 2**F) with |q| <= 2**(bits - sign) - 1
    cases = [
        (f32(0.25, -0.5, 0.125, 0.75), 8),  # k = 1, I = 3, F = 4: q = 40, -80, 20, 120
        (f32(0.3, 0.7, -0.1, 0.05), 6),  # k = 1, I = 3, F = 2: q = 12, 28, -4, 2
        (np.array([1.5, -2.25, 3.0], np.float64), 6),  # k = 0, I = 2, F = 3: 12, -18, 24
        (np.array([0.0125, -0.045], np.float64), 16),  # k = 2, I = 3, F = 12: 5120, -18432
        (np.array([1000.0, -8.0, 24.0], np.float16), 8),  # k = 0, I = 10, F = -3: 125, -1, 3
    ]
    for x, bits in cases:
        np.testing.assert_array_equal(fixed_point_quantize(x, bits), x)


def test_fixed_point_glorot_kernel_keeps_its_levels():
    # max|w| = 0.072: k = 2 (7.2), I = 3, sign bit. 4 bits: F = 0, levels -7..7 (0.01
    # apart); 2 bits: F = -2, levels -1, 0, 1 (0.04 apart): not all zero.
    w = glorot_kernel()
    assert 0.07 < np.abs(w).max() < 0.0723
    previous = None
    for bits, at_least in ((2, 3), (4, 15), (6, 55), (8, 200)):
        q, f = fixed_point_quantize_with_format(w, bits)
        assert (f.decimal_shift, f.integer_bits, f.sign_bit) == (2, 3, True)
        assert len(np.unique(q)) >= at_least
        error = relative_error_pct(w, q)
        assert previous is None or error < previous / 3
        previous = error
    assert np.count_nonzero(fixed_point_quantize(w, 2)) > w.size // 2
    assert relative_error_pct(w, fixed_point_quantize(w, 4)) < 8.0  # percent


def test_fixed_point_32_bits():
    x32 = f32(0.99999994, -0.75, 1e-9)
    np.testing.assert_array_equal(fixed_point_quantize(x32, 32), reference_fixed(x32, 32)[0])
    x = np.array([0.5, 0.25, 2.0**-30], dtype=np.float64)  # k = 1, I = 3, F = 29, no sign
    np.testing.assert_array_equal(fixed_point_quantize(x, 32), x)


def test_fixed_point_all_zero_is_unchanged():
    x = np.zeros((2, 3), dtype=F32)
    q, f = fixed_point_quantize_with_format(x, 8)
    np.testing.assert_array_equal(q, x)
    assert f == fmt(0, 0, 8, False, 8)
    assert fixed_point_format(0.0, True, 8) == fmt(0, 0, 7, True, 8)


def test_fixed_point_extremes_of_the_dtypes():
    # near float32's largest value 2**I does not fit: results are clipped to the dtype
    big = f32(3.4e38, -3.0e38, 1.0)
    for bits in (4, 8, 24, 25, 32):
        q = fixed_point_quantize(big, bits)
        assert np.all(np.isfinite(q)) and q[0] > 2.9e38  # 7/8 * 2**128 at 4 bits
    h = np.array([65504, -60000, 1], np.float16)
    assert np.all(np.isfinite(fixed_point_quantize(h, 16)))
    # tiny float64 values: a shift beyond 10**308 is applied in two factors
    tiny = np.array([1.5e-320, -5e-321, 0.0])  # subnormal: 1.5e-320 * 10**320 = 1.49996
    q, f = fixed_point_quantize_with_format(tiny, 8)
    assert f == fmt(320, 1, 6, True, 8) and np.all(np.isfinite(q))
    assert np.all(np.abs(q - tiny) <= 1e-320 / 64 / 2 + 5e-324)  # half a step
    # subnormal float32 values: k = 45
    sub = f32(1e-45, 3e-45)
    assert fixed_point_quantize_with_format(sub, 8)[1].decimal_shift == 45
    np.testing.assert_array_equal(fixed_point_quantize(sub, 8), sub)


def test_fixed_point_matches_the_reference_on_many_values():
    rng = np.random.default_rng(2)
    for scale in (1e-6, 1e-3, 0.07, 0.3, 1.0, 7.5, 1e4):
        x = (rng.standard_normal(3000) * scale).astype(F32)
        for bits in (1, 2, 3, 4, 5, 8, 12, 16, 17, 24, 25, 32):
            np.testing.assert_array_equal(
                fixed_point_quantize(x, bits), reference_fixed(x, bits)[0]
            )
        positive = np.abs(x)
        for bits in (1, 4, 8, 16):
            np.testing.assert_array_equal(
                fixed_point_quantize(positive, bits), reference_fixed(positive, bits)[0]
            )


def test_fixed_point_float32_fast_path_redoes_values_next_to_half_steps():
    # m = 0.8: k = 1, I = 4 (0.8f * 10 = 8.0000001), sign bit, F = bits - 5, c = 10 * 2**F.
    # float32 values nearest to half-steps (j + 0.5) / c and their neighbours: the float32
    # product x * c often rounds onto the half-integer (a tie) where the exact product
    # lies to one side; they must round as the exact product does.
    for bits in (8, 12, 16):
        c = 10 * 2 ** (bits - 5)
        j = np.arange(-(2 ** (bits - 2)), 2 ** (bits - 2))
        near = ((j + 0.5) / c).astype(F32)
        x = np.concatenate([near, np.nextafter(near, F32(1)), np.nextafter(near, F32(-1))])
        x = np.concatenate([x, f32(0.8, -0.8)])
        q, f = fixed_point_quantize_with_format(x, bits)
        assert f == fmt(1, 4, bits - 5, True, bits)
        np.testing.assert_array_equal(q, reference_fixed(x, bits)[0])


# ------------------------------------------------------------------ both: refusals and dtypes

QUANTIZERS = {"bin": bin_quantize, "fixed": fixed_point_quantize}


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("bits", [0, 33, -1, 2.5, "8", True, None])
def test_bad_bits_are_refused(algorithm, bits):
    with pytest.raises(QuantflowError, match="bits"):
        QUANTIZERS[algorithm](f32(0, 1), bits)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_with_the_tensor_name(algorithm, bad):
    with pytest.raises(QuantflowError, match="conv1/kernel.*NaN or infinite"):
        QUANTIZERS[algorithm](f32(0, 1, bad), 8, name="conv1/kernel")


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_integer_tensors_are_refused(algorithm):
    with pytest.raises(QuantflowError, match="dtype int"):
        QUANTIZERS[algorithm](np.arange(4), 8)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtype_and_shape_are_preserved(algorithm, dtype):
    x = np.linspace(-2, 3, 24).astype(dtype).reshape(2, 3, 4)
    q = QUANTIZERS[algorithm](x, 4)
    assert q.dtype == dtype and q.shape == x.shape
    empty = QUANTIZERS[algorithm](np.zeros((0, 3), dtype), 4)
    assert empty.dtype == dtype and empty.shape == (0, 3)


def test_relative_error():
    assert relative_error(f32(3, 4), f32(3, 4)) == 0.0
    assert relative_error(f32(3, 4), f32(0, 0)) == pytest.approx(1.0)
    assert relative_error(f32(3, 4), f32(3, 3)) == pytest.approx(0.2)
    assert relative_error(f32(0, 0), f32(0, 0)) == 0.0
    assert relative_error(f32(0, 0), f32(0, 1)) == np.inf
    assert relative_error_pct(f32(3, 4), f32(3, 3)) == pytest.approx(20.0)
    assert relative_error_pct(f32(3, 4), f32(0, 0)) == pytest.approx(100.0)


# ------------------------------------------------------------------ properties

finite32 = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
tensors = hnp.arrays(F32, st.integers(1, 300), elements=finite32)


@settings(max_examples=150, deadline=None)
@given(tensors, st.integers(1, 16))
@example(f32(1e-45, 0), 1)  # subnormal range: float32 centres would be 0
@example(f32(1000, 1000.0001, 1000.5), 16)  # far from zero: bins finer than float32
@example(f32(8.8e-44, 0), 1)  # subnormal: a centre is a whole float32 step off
def test_bin_values_stay_in_range_and_within_half_a_bin(x, bits):
    q = bin_quantize(x, bits)
    lo, hi = x.min(), x.max()
    assert q.dtype == F32 and q.shape == x.shape
    assert np.all(q >= lo) and np.all(q <= hi)
    if lo < hi:
        half = (float(hi) - float(lo)) / 2**bits / 2
        # the centres are float32: rounding, relative and (subnormal) absolute
        top = max(abs(float(lo)), abs(float(hi)))
        tolerance = 1e-6 * top + float(np.spacing(np.float32(top)))
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
@given(tensors, st.integers(1, 32))
@example(f32(0.3, -0.25, 0.1), 4)
@example(f32(1e-45, -3e-45), 3)  # subnormal: k = 45
@example(f32(-0.0, 0.0), 4)
def test_fixed_point_matches_the_definition_and_stays_on_its_grid(x, bits):
    q, f = fixed_point_quantize_with_format(x, bits)
    assert q.dtype == F32 and q.shape == x.shape
    expected, (k, integer_bits, fractional_bits, sign) = reference_fixed(x, bits)
    assert (f.decimal_shift, f.integer_bits, f.fractional_bits, f.sign_bit) == (
        k,
        integer_bits,
        fractional_bits,
        sign,
    )
    m = float(np.max(np.abs(x)))
    if m == 0 or m >= 1e-12:  # float64 is exact there
        np.testing.assert_array_equal(q, expected)
    if m == 0:
        return
    # every value is a grid point n / (10**k * 2**F), |n| <= top, rounded to float32 (to
    # within an ulp: 10**k is inexact in float64 beyond k = 22), the nearest one to x
    # where |x| is inside the range (up to float32's resolution), else +-top
    scale = Fraction(10**k) * Fraction(2) ** fractional_bits
    top = 2 ** (bits - sign) - 1
    for xv, qv in zip(x.tolist(), q.tolist()):
        n = round(Fraction(qv) * scale)
        assert abs(n) <= top
        point = F32(float(Fraction(n) / scale))
        assert abs(qv - float(point)) <= abs(float(np.spacing(point)))
        exact = Fraction(xv) * scale
        if abs(exact) <= top:
            assert abs(exact - n) <= 0.5 + abs(float(np.spacing(F32(qv)))) * scale
        elif abs(exact) > top + Fraction(1, 2):
            assert n == (top if exact > 0 else -top)  # saturated, on both sides
    assert sign == bool(np.any(x < 0))


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(
        F32,
        st.integers(1, 200),
        elements=st.floats(-1.0, 1.0, allow_nan=False, width=32).filter(
            lambda v: v == 0 or abs(v) >= 1e-6
        ),
    ),
    st.integers(1, 16),
)
def test_fixed_point_below_one_uses_a_decimal_shift(x, bits):
    # the shift brings the largest magnitude to [1, 10): at least 1, so I >= 1
    q, f = fixed_point_quantize_with_format(x, bits)
    m = float(np.max(np.abs(x)))
    assume(m > 0)
    shifted = m * 10**f.decimal_shift
    assert 1 <= shifted < 10 or (f.decimal_shift == 0 and m >= 1)
    assert f.integer_bits == int(shifted).bit_length() >= 1
    np.testing.assert_array_equal(q, reference_fixed(x, bits)[0])


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
    assert set(errors["relative_error_pct"]) == {
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
            np.testing.assert_array_equal(q, QUANTIZERS[algorithm](a, 3))
            # in percent
            assert errors["relative_error_pct"][key] == pytest.approx(100 * relative_error(a, q))
            if algorithm == "fixed":
                f = fixed_point_quantize_with_format(a, 3)[1]
                assert errors["fixed_point"][key] == {
                    "decimal_shift": f.decimal_shift,
                    "integer_bits": f.integer_bits,
                    "fractional_bits": f.fractional_bits,
                    "sign_bit": f.sign_bit,
                }
    assert set(errors) == {
        "algorithm",
        "bits",
        "relative_error_pct",
        "relative_error_pct_min",
        "relative_error_pct_mean",
        "relative_error_pct_max",
        *(["fixed_point"] if algorithm == "fixed" else ["affine_exact"]),
    }
    if algorithm == "fixed":
        assert set(errors["fixed_point"]) == set(errors["relative_error_pct"])
    values = list(errors["relative_error_pct"].values())
    assert errors["relative_error_pct_min"] == min(values)
    assert errors["relative_error_pct_max"] == max(values)
    assert errors["relative_error_pct_mean"] == pytest.approx(np.mean(values))
    assert errors["algorithm"] == algorithm and errors["bits"] == 3
    assert new["metadata"]["quantization"] == {
        "algorithm": algorithm,
        "bits": 3,
        "keep_batchnorm_float": False,
        "keep_bias_float": False,
        "quantized": sorted(errors["relative_error_pct"]),
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
        assert (key not in errors["relative_error_pct"]) == kept
        if kept:
            np.testing.assert_array_equal(flat(new)[key], a)
        assert flat(new)[key].dtype == a.dtype
    pct = [errors[f"relative_error_pct_{s}"] for s in ("min", "mean", "max")]
    assert pct[0] <= pct[1] * (1 + 1e-12) and pct[1] <= pct[2] * (1 + 1e-12)


def test_quantize_weights_with_nothing_to_quantize():
    data = checkpoint()
    data["metadata"]["trainable"] = dict.fromkeys(data["metadata"]["trainable"], False)
    _, errors = quantize_weights(data, "fixed", 4)
    assert errors["relative_error_pct"] == {} and errors["fixed_point"] == {}
    assert errors["relative_error_pct_mean"] is None


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
    from quantflow.quant.weightonly.packed import packed_size_bytes

    data = {
        "format": "quantflow-weights/1",
        "metadata": {
            "trainable": {"d/kernel": True, "d/bias": True, "bn/moving_mean": False},
            "layer_classes": {"d": "Dense", "bn": "BatchNormalization"},
        },
        "layers": {
            "d": {
                "kernel": np.linspace(-1, 1, 100, dtype=np.float32).reshape(10, 10),
                "bias": np.ones(10, np.float32),
            },
            "bn": {"moving_mean": np.zeros(10, np.float32)},
        },
    }
    assert packed_size_bytes(data) == 120 * 4  # not quantized: all float32
    quantized, _ = quantize_weights(data, "bin", 4, keep_bias_float=True)
    # kernel: 100 values x 4 bits = 50 bytes + 8 bytes of parameters; bias and moving mean float32
    assert packed_size_bytes(quantized) == 50 + 8 + 10 * 4 + 10 * 4
    quantized, _ = quantize_weights(data, "fixed", 3)
    assert packed_size_bytes(quantized) == (38 + 8) + (4 + 8) + 10 * 4  # ceil(300/8), ceil(30/8)


def test_bin_grid_is_affine_exact_only_when_its_offset_is_whole_steps():
    """bin-2 of [-1, 3]: w = 1, centres -0.5, 0.5, 1.5, 2.5 = (q - z) w with z = 0.5: not
    an integer, so no scale and zero point hold it; [-1.5, 2.5]: centres -1, 0, 1, 2,
    z = 1: exact."""
    from quantflow.quant.weightonly.bin import affine_exact, bin_quantize

    off = np.array([-1.0, 0.2, 3.0], np.float32)
    on = np.array([-1.5, 0.2, 2.5], np.float32)
    assert not affine_exact(off, 2) and affine_exact(on, 2)
    np.testing.assert_array_equal(bin_quantize(on, 2), [-1.0, 0.0, 2.0])
    assert affine_exact(np.full(4, 0.3, np.float32), 2)  # constant: left unchanged
    _, errors = quantize_weights(checkpoint(), "bin", 4)
    assert set(errors["affine_exact"]) == set(errors["relative_error_pct"])
    assert "affine_exact" not in quantize_weights(checkpoint(), "fixed", 4)[1]
