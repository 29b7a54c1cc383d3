"""Tests for quantflow.metrics against hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from quantflow.metrics import (
    classification_metrics,
    confusion_matrix,
    plot_confusion_matrix,
    top_k_accuracy,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def logits_for(y_pred: list[int], num_classes: int) -> np.ndarray:
    """Logits whose argmax is y_pred; the other classes rank by index, no ties."""
    scores = np.tile(-np.arange(num_classes, dtype=np.float64), (len(y_pred), 1))
    scores[np.arange(len(y_pred)), y_pred] = 10.0
    return scores


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# Hand-computed 3-class example, N = 9.
#   y_true = 0 0 0 1 1 2 2 2 2
#   y_pred = 0 0 1 1 2 2 2 2 1
# Confusion matrix (rows true, cols predicted):
#          p0 p1 p2
#     t0 [  2  1  0 ]   recall 2/3
#     t1 [  0  1  1 ]   recall 1/2
#     t2 [  0  1  3 ]   recall 3/4
# precision: col0 2/2 = 1, col1 1/3, col2 3/4
# accuracy    = trace / N = 6/9 = 2/3
# precision   = (1 + 1/3 + 3/4) / 3 = (12 + 4 + 9) / 36 = 25/36
# sensitivity = (2/3 + 1/2 + 3/4) / 3 = (8 + 6 + 9) / 36 = 23/36
# g_mean      = cbrt(2/3 * 1/2 * 3/4) = cbrt(1/4)
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2]
Y_PRED = [0, 0, 1, 1, 2, 2, 2, 2, 1]


def test_hand_computed_three_classes() -> None:
    m = classification_metrics(Y_TRUE, logits_for(Y_PRED, 3), 3)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 1, 3]]
    assert m["num_samples"] == 9
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["per_class_precision"] == pytest.approx([1.0, 1 / 3, 3 / 4])
    assert m["per_class_recall"] == pytest.approx([2 / 3, 1 / 2, 3 / 4])
    assert m["precision"] == pytest.approx(25 / 36)
    assert m["sensitivity"] == pytest.approx(23 / 36)
    assert m["g_mean"] == pytest.approx((2 / 3 * 1 / 2 * 3 / 4) ** (1 / 3))
    assert m["g_mean"] == pytest.approx(0.25 ** (1 / 3))
    assert m["top5"] == 1.0  # k clipped to 3 classes: every sample is in the top 3


def test_result_is_json_serialisable_plain_types() -> None:
    m = classification_metrics(Y_TRUE, logits_for(Y_PRED, 3), 3)
    assert json.loads(json.dumps(m)) == m
    for key in ("accuracy", "top5", "precision", "sensitivity", "g_mean"):
        assert type(m[key]) is float
    assert type(m["num_samples"]) is int
    assert all(type(v) is int for row in m["confusion_matrix"] for v in row)


def test_never_predicted_class_has_precision_zero() -> None:
    # y_true = 0 1 2 2, y_pred = 0 0 2 2: class 1 is never predicted.
    # precision: c0 1/2, c1 0 (convention), c2 2/2 -> macro (0.5 + 0 + 1) / 3 = 0.5
    # recall:    c0 1/1, c1 0/1, c2 2/2 -> sensitivity 2/3, g_mean 0
    m = classification_metrics([0, 1, 2, 2], logits_for([0, 0, 2, 2], 3), 3)
    assert m["per_class_precision"] == [0.5, 0.0, 1.0]
    assert m["precision"] == pytest.approx(0.5)
    assert m["per_class_recall"] == [1.0, 0.0, 1.0]
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["g_mean"] == 0.0


def test_g_mean_zero_when_one_class_has_zero_recall() -> None:
    # Class 2 is always predicted as 0: recall 0 -> g_mean exactly 0.
    m = classification_metrics([0, 1, 2, 2], logits_for([0, 1, 0, 0], 3), 3)
    assert m["per_class_recall"] == [1.0, 1.0, 0.0]
    assert m["g_mean"] == 0.0
    assert m["sensitivity"] == pytest.approx(2 / 3)


def test_g_mean_no_underflow_with_many_classes() -> None:
    # 1100 classes, each recall 1/2: the plain product 2**-1100 underflows to 0.0
    # in float64 (smallest subnormal is 2**-1074); the geometric mean must be 0.5.
    n = 1100
    y_true = np.repeat(np.arange(n), 2)
    y_pred = y_true.copy()
    y_pred[1::2] = (y_true[1::2] + 1) % n  # second sample of each class is wrong
    m = classification_metrics(y_true, logits_for(list(y_pred), n), n)
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["g_mean"] == pytest.approx(0.5)


def test_absent_class_excluded_from_recall_metrics() -> None:
    # 4 classes, class 3 never occurs (and is never predicted): left out of every mean.
    # y_true = 0 0 1 2, y_pred = 0 1 1 2
    # recall:    c0 1/2, c1 1, c2 1, c3 None -> sensitivity 2.5/3 = 5/6,
    #            g_mean cbrt(1/2 * 1 * 1)
    # precision: c0 1/1, c1 1/2, c2 1/1, c3 None -> macro 2.5/3 = 5/6
    m = classification_metrics([0, 0, 1, 2], logits_for([0, 1, 1, 2], 4), 4)
    assert m["per_class_recall"] == [0.5, 1.0, 1.0, None]
    assert m["sensitivity"] == pytest.approx(5 / 6)
    assert m["g_mean"] == pytest.approx(0.5 ** (1 / 3))
    assert m["per_class_precision"] == [1.0, 0.5, 1.0, None]
    assert m["precision"] == pytest.approx(5 / 6)
    assert len(m["per_class_recall"]) == 4


def test_perfect_classifier_on_a_test_set_lacking_a_class_scores_one() -> None:
    # 3 classes, the test set has only classes 0 and 1, every prediction right: averaging
    # over all 3 classes would give precision 2/3; over present-or-predicted ones, 1.
    m = classification_metrics([0, 1, 1, 0], logits_for([0, 1, 1, 0], 3), 3)
    assert m["precision"] == m["sensitivity"] == m["g_mean"] == m["accuracy"] == 1.0
    assert m["per_class_precision"] == [1.0, 1.0, None]


def test_predicted_class_absent_from_labels_counts_as_zero() -> None:
    # scikit-learn: labels = present in y_true or predicted. y_true = 0 0 1, y_pred = 0 2 1
    # precision: c0 1/1, c1 1/1, c2 0/1 -> 2/3; recall: c0 1/2, c1 1, c2 0 (no true
    # samples: 0 by convention) -> 1.5/3 = 1/2; g_mean 0 (a recall is 0).
    m = classification_metrics([0, 0, 1], logits_for([0, 2, 1], 3), 3)
    assert m["per_class_precision"] == [1.0, 1.0, 0.0]
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["per_class_recall"] == [0.5, 1.0, 0.0]
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["g_mean"] == 0.0


def test_top5_with_ten_classes() -> None:
    # Every row ranks classes 9 > 8 > ... > 0, so the top 5 are {9, 8, 7, 6, 5}.
    scores = np.tile(np.arange(10, dtype=np.float64), (4, 1))
    y_true = [9, 5, 4, 0]  # in top 5: 9 and 5 -> 2/4; top-1: only 9 -> 1/4
    assert top_k_accuracy(y_true, scores, 5) == 0.5
    assert top_k_accuracy(y_true, scores, 1) == 0.25
    m = classification_metrics(y_true, scores, 10)
    assert m["top5"] == 0.5
    assert m["accuracy"] == 0.25


def test_top5_with_three_classes_clips_k() -> None:
    scores = np.array([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2]])
    assert top_k_accuracy([0, 1], scores, 5) == 1.0
    assert top_k_accuracy([0, 1], scores, 3) == 1.0
    assert top_k_accuracy([0, 1], scores, 2) == 0.5  # row 0 top-2 is {2, 1}
    assert classification_metrics([0, 1], scores, 3)["top5"] == 1.0


def test_ties_count_as_expected_hits_under_random_tie_breaking() -> None:
    # Three classes all tied: each sample is a top-1 hit with probability 1/3 and a
    # top-2 hit with probability 2/3, whatever its class index.
    scores = np.zeros((3, 3))
    assert top_k_accuracy([0, 1, 2], scores, 1) == pytest.approx(1 / 3)
    assert top_k_accuracy([0, 1, 2], scores, 2) == pytest.approx(2 / 3)
    assert top_k_accuracy([2, 2, 2], scores, 1) == pytest.approx(1 / 3)  # no index favoured


def test_hand_made_int8_like_outputs_with_ties() -> None:
    # Dequantized int8 logits (steps of 0.5), 4 samples, 6 classes.
    scores = np.array(
        [
            [2.0, 2.0, 0.5, 0.0, -1.0, -1.0],  # top-1 tie {0, 1}
            [1.0, 3.0, 3.0, 3.0, 0.0, 0.0],  # top-1 tie {1, 2, 3}
            [4.0, 1.0, 0.5, 0.5, 0.5, 0.5],  # no top-1 tie; 5th place shared by 4 classes
            [0.0, 0.0, 0.0, 0.0, 0.0, 9.0],  # no top-1 tie; 5th place shared by 5 classes
        ]
    )
    y = [1, 0, 5, 4]
    # top-1: sample 0: class 1 among 2 tied -> 1/2; sample 1: class 0 not in the tie -> 0;
    #        samples 2, 3: wrong -> 0.                                 accuracy = 0.5 / 4
    # top-5: sample 0: class 1 above the 5th place (-1.0) -> 1.
    #        sample 1: 5th place 0.0 shared by {4, 5}, 4 classes above -> class 0 above: 1.
    #        sample 2: 5th place 0.5 shared by {2, 3, 4, 5}, 2 above, 3 places left ->
    #                  class 5 gets 3/4.
    #        sample 3: 5th place 0.0 shared by {0..4}, 1 above, 4 places left -> 4/5.
    #        top5 = (1 + 1 + 3/4 + 4/5) / 4 = 3.55 / 4
    m = classification_metrics(y, scores, 6)
    assert m["accuracy"] == pytest.approx(0.5 / 4)
    assert m["top5"] == pytest.approx(3.55 / 4)
    assert m["tie_rate"] == 0.5  # samples 0 and 1
    # every sample's 5th place is shared across the boundary: sample 0 (-1.0: {4, 5}, one
    # place left), sample 1 (0.0: {4, 5}, one place), samples 2 and 3 as above
    assert m["top5_tie_rate"] == 1.0
    cm = np.array(m["confusion_matrix"])
    # sample 0 (true 1) splits between predicted 0 and 1; sample 1 (true 0) three ways
    assert cm[1, 0] == cm[1, 1] == 0.5
    assert cm[0, 1] == cm[0, 2] == cm[0, 3] == pytest.approx(1 / 3)
    assert cm.sum() == pytest.approx(4)
    assert m["accuracy"] == pytest.approx(np.trace(cm) / 4)


def test_lowest_index_tie_breaking_would_bias_accuracy() -> None:
    # Half the samples tie classes 0 and 1 at the top: argmax favours class 0.
    scores = np.array([[1.0, 1.0, 0.0]] * 4)
    assert classification_metrics([0, 0, 1, 1], scores, 3)["accuracy"] == 0.5
    assert classification_metrics([0, 0, 0, 0], scores, 3)["accuracy"] == 0.5
    assert classification_metrics([0, 0, 0, 0], scores, 3)["tie_rate"] == 1.0


def test_top_k_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match="k must be"):
        top_k_accuracy([0], np.zeros((1, 3)), 0)


def test_invariant_under_softmax_of_logits() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 10)) * 3
    y_true = rng.integers(0, 10, size=200)
    assert classification_metrics(y_true, logits, 10) == classification_metrics(
        y_true, softmax(logits), 10
    )


def test_confusion_matrix_sums_to_n_and_dtype() -> None:
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 7, size=123)
    y_pred = rng.integers(0, 7, size=123)
    cm = confusion_matrix(y_true, y_pred, 7)
    assert cm.shape == (7, 7)
    assert cm.dtype == np.int64
    assert cm.sum() == 123
    assert np.array_equal(cm.sum(axis=1), np.bincount(y_true, minlength=7))
    assert np.array_equal(cm.sum(axis=0), np.bincount(y_pred, minlength=7))


def test_confusion_matrix_hand_example() -> None:
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 1, 3]]


@pytest.mark.parametrize("bad", [3, -1, 17])
def test_bad_label_raises_and_names_it(bad: int) -> None:
    with pytest.raises(ValueError, match=rf"label {bad}\b"):
        confusion_matrix([0, bad, 1], [0, 1, 1], 3)
    with pytest.raises(ValueError, match=rf"label {bad}\b"):
        confusion_matrix([0, 1, 1], [0, bad, 1], 3)
    with pytest.raises(ValueError, match=rf"label {bad}\b"):
        classification_metrics([0, bad, 1], np.zeros((3, 3)), 3)


def test_non_integer_labels_raise() -> None:
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix([0.5, 1.0], [0, 1], 3)


def test_shape_mismatches_raise() -> None:
    with pytest.raises(ValueError, match="rows"):
        classification_metrics([0, 1, 2], np.zeros((4, 3)), 3)
    with pytest.raises(ValueError, match="columns"):
        classification_metrics([0, 1, 2], np.zeros((3, 4)), 3)
    with pytest.raises(ValueError, match="2-D"):
        classification_metrics([0, 1, 2], np.zeros(3), 3)
    with pytest.raises(ValueError, match="1-D"):
        classification_metrics([[0, 1, 2]], np.zeros((3, 3)), 3)
    with pytest.raises(ValueError, match="must match"):
        confusion_matrix([0, 1, 2], [0, 1], 3)
    with pytest.raises(ValueError, match="rows"):
        top_k_accuracy([0, 1], np.zeros((3, 3)), 1)


def test_non_finite_scores_and_empty_input_raise() -> None:
    scores = np.zeros((2, 3))
    scores[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics([0, 1], scores, 3)
    with pytest.raises(ValueError, match="at least one sample"):
        classification_metrics([], np.zeros((0, 3)), 3)


def test_plot_confusion_matrix_writes_png(tmp_path: Path) -> None:
    cm = np.array(classification_metrics(Y_TRUE, logits_for(Y_PRED, 3), 3)["confusion_matrix"])
    out = tmp_path / "nested" / "cm.png"
    plot_confusion_matrix(cm, ["cat", "dog", "ship"], out, "int8 PTQ")
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1000


def test_plot_confusion_matrix_many_classes_and_empty_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    cm = rng.integers(0, 20, size=(40, 40))
    cm[3] = 0  # a class with no samples: row normalisation must not divide by 0
    out = tmp_path / "cm40.png"
    plot_confusion_matrix(cm, [f"class_{i}" for i in range(40)], str(out), "40 classes")
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_confusion_matrix_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="class names"):
        plot_confusion_matrix(np.eye(3, dtype=int), ["a", "b"], tmp_path / "x.png", "t")
    with pytest.raises(ValueError, match="square"):
        plot_confusion_matrix(np.zeros((2, 3), dtype=int), ["a", "b"], tmp_path / "x.png", "t")


@st.composite
def labelled_scores(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    num_classes = draw(st.integers(1, 8))
    n = draw(st.integers(1, 40))
    y_true = draw(arrays(np.int64, n, elements=st.integers(0, num_classes - 1)))
    scores = draw(
        arrays(
            np.float64,
            (n, num_classes),
            elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
        )
    )
    return y_true, scores, num_classes


@settings(max_examples=200, deadline=None)
@given(labelled_scores())
def test_property_metric_invariants(data: tuple[np.ndarray, np.ndarray, int]) -> None:
    y_true, scores, num_classes = data
    m = classification_metrics(y_true, scores, num_classes)
    cm = np.array(m["confusion_matrix"])
    n = len(y_true)
    assert cm.sum() == pytest.approx(n) and n == m["num_samples"]
    assert m["accuracy"] == pytest.approx(np.trace(cm) / n)
    if m["tie_rate"] == 0:
        assert m["accuracy"] == pytest.approx(np.mean(np.argmax(scores, axis=1) == y_true))
    # a second implementation from the definition: 1/e of a hit among e tied classes
    best = scores.max(axis=1, keepdims=True)
    expected = np.mean((scores[np.arange(n), y_true] == best[:, 0]) / (scores == best).sum(1))
    assert m["accuracy"] == pytest.approx(expected)
    for key in ("accuracy", "top5", "precision", "sensitivity", "g_mean"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["top5"] >= m["accuracy"]
    assert m["g_mean"] <= m["sensitivity"] + 1e-12  # AM-GM
    counted = [r for r in m["per_class_recall"] if r is not None]
    predicted = set(np.flatnonzero(cm.sum(axis=0) > 0).tolist())
    assert len(counted) == len(set(y_true.tolist()) | predicted)
    assert all(p is None or 0.0 <= p <= 1.0 for p in m["per_class_precision"])
    assert math.isfinite(m["g_mean"])
