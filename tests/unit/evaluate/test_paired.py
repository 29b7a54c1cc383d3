"""quantflow.evaluate.paired: the exact paired test, against p-values worked by hand."""

import itertools
import math

import numpy as np
import pytest

from quantflow.evaluate.paired import (
    MCNEMAR,
    SIGN_FLIP,
    load_predictions,
    paired_test,
    save_predictions,
)
from quantflow.metrics import top1_credit, top_k_accuracy


def credits(a_only: int, b_only: int, both: int = 50, neither: int = 10):
    """Per-image credit of two variants: a_only images only A gets right, b_only only B."""
    a = [1.0] * a_only + [0.0] * b_only + [1.0] * both + [0.0] * neither
    b = [0.0] * a_only + [1.0] * b_only + [1.0] * both + [0.0] * neither
    return np.array(a), np.array(b)


@pytest.mark.parametrize(
    "a_only, b_only, p",
    [
        (0, 0, 1.0),  # identical on every image
        (1, 0, 1.0),  # 2 x 1/2
        (5, 0, 2 / 32),  # 0.0625: five images one way is not enough
        (6, 0, 2 / 64),  # 0.03125: six is
        (10, 2, 2 * (1 + 12 + 66) / 4096),  # 0.0386
        (7, 7, 1.0),
    ],
)
def test_mcnemar_exact_by_hand(a_only, b_only, p):
    a, b = credits(a_only, b_only)
    result = paired_test(a, b)
    assert result["test"] == MCNEMAR
    assert result["p"] == pytest.approx(p, rel=1e-12)
    assert result["differ"] == a_only + b_only
    assert (result["a_better"], result["b_better"]) == (a_only, b_only)
    assert result["significant"] == (p < 0.05)
    # the test is symmetric in its two variants
    assert paired_test(b, a)["p"] == pytest.approx(p, rel=1e-12)


def test_fractional_credit_takes_the_exact_sign_flip_test():
    # five images only A gets right (+1 each), one where B's tie gives it half (-1/2):
    # on the grid of halves the differences are 2,2,2,2,2,-1, observed sum 9; |sum| >= 9
    # only when the five 2s share one sign (the 1 either way): 4 of 64 sign patterns
    a = np.array([1, 1, 1, 1, 1, 0.0, 1, 0])
    b = np.array([0, 0, 0, 0, 0, 0.5, 1, 0])
    result = paired_test(a, b)
    assert result["test"] == SIGN_FLIP
    assert result["p"] == pytest.approx(4 / 64, rel=1e-12)
    assert result["delta_images"] == pytest.approx(4.5)


def test_the_sign_flip_distribution_against_enumeration():
    rng = np.random.default_rng(0)
    d = rng.choice([1.0, -1.0, 0.5, -0.5, 1 / 3, -2 / 3], size=14)
    observed = abs(d.sum())
    count = sum(
        abs(sum(s * x for s, x in zip(signs, d))) >= observed - 1e-9
        for signs in itertools.product((1, -1), repeat=d.size)
    )
    result = paired_test(d, np.zeros_like(d))
    assert result["p"] == pytest.approx(count / 2**d.size, rel=1e-9)


def test_large_runs_stay_exact_and_fast():
    a, b = credits(120, 83, both=9000, neither=797)  # int8 vs int8 on 10,000 images
    result = paired_test(a, b)
    assert result["differ"] == 203 and 0.005 < result["p"] < 0.02
    a[:40] = 0.5  # some ties: the sign-flip path over a thousand-odd values
    assert 0.0 < paired_test(a, b)["p"] <= 1.0


def test_predictions_file_round_trip(tmp_path):
    labels = np.array([0, 1, 2, 1])
    scores = np.array([[3, 1, 0], [2, 2, 0], [0, 1, 5], [4, 0, 0.0]])
    save_predictions(tmp_path / "predictions.npz", labels, scores)
    got = load_predictions(tmp_path / "predictions.npz")
    assert got["labels"].tolist() == [0, 1, 2, 1]
    assert got["top1"].tolist() == [0, 0, 2, 0]
    assert got["credit"].tolist() == [1.0, 0.5, 1.0, 0.0]
    assert got["credit"].mean() == top_k_accuracy(labels, scores, 1)
    assert top1_credit(labels, scores).tolist() == got["credit"].tolist()


def test_arrays_of_different_lengths_are_refused():
    with pytest.raises(ValueError):
        paired_test(np.ones(3), np.ones(4))


def test_output_snr_worked_by_hand(tmp_path):
    """Reference outputs [[3, 4]] (power 25) against [[3, 3]] (noise power 1): 10 log10 25
    = 13.98 dB; equal outputs have no noise (None); predictions.npz keeps the outputs."""
    from quantflow.evaluate.paired import load_predictions, output_snr_db, save_predictions

    assert output_snr_db([[3.0, 3.0]], [[3.0, 4.0]]) == pytest.approx(10 * math.log10(25))
    assert output_snr_db([[3.0, 4.0]], [[3.0, 4.0]]) is None
    assert output_snr_db(None, [[1.0]]) is None and output_snr_db([[1.0, 2.0]], [[1.0]]) is None
    save_predictions(tmp_path / "p.npz", [1], [[3.0, 4.0]])
    loaded = load_predictions(tmp_path / "p.npz")
    np.testing.assert_array_equal(loaded["scores"], [[3.0, 4.0]])
    assert loaded["scores"].dtype == np.float32
