"""Classification metrics on model outputs, and a confusion-matrix plot.

All functions take true labels as integers ``0..num_classes-1`` and scores as an
``(N, C)`` array of logits or probabilities: argmax and top-k depend only on the
order of each row's scores, so both give the same results.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "confusion_matrix",
    "expected_confusion_matrix",
    "top_k_accuracy",
    "top1_credit",
    "classification_metrics",
    "plot_confusion_matrix",
]

# Above this many classes the cell counts are no longer readable; colours only.
_MAX_ANNOTATED_CLASSES = 30


def _labels(y: ArrayLike, num_classes: int, name: str) -> np.ndarray:
    """Return ``y`` as a 1-D int64 array, checking every label is in range."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer class labels, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{name} holds label {int(bad[0])}, outside 0..{num_classes - 1} "
            f"(num_classes={num_classes})"
        )
    return arr


def _scores(scores: ArrayLike, n: int, num_classes: int | None = None) -> np.ndarray:
    """Return ``scores`` as a finite (n, C) float array, checking its shape."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"scores must be 2-D (N, C), got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(
            f"scores has {arr.shape[0]} rows but y_true has {n} labels; they must match"
        )
    if num_classes is not None and arr.shape[1] != num_classes:
        raise ValueError(f"scores has {arr.shape[1]} columns but num_classes is {num_classes}")
    if arr.shape[1] < 1:
        raise ValueError("scores must have at least one column (class)")
    if not np.all(np.isfinite(arr)):
        raise ValueError("scores contain NaN or infinite values")
    return arr


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> np.ndarray:
    """Count matrix ``cm[t, p]``: samples of true class ``t`` predicted as ``p``.

    Returns an int64 array of shape ``(num_classes, num_classes)``; it sums to N.
    Raises ValueError for a label outside ``0..num_classes-1`` or unequal lengths.
    """
    t = _labels(y_true, num_classes, "y_true")
    p = _labels(y_pred, num_classes, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}; they must match")
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def _expected_topk(t: np.ndarray, s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: the expected top-k hit under random tie-breaking, and whether a tie
    straddles the k-th place.

    With v the k-th largest score, g the classes scoring above v and e those scoring
    exactly v, the top k hold the g classes above v and k - g of the e tied ones, chosen
    at random: the true class is a hit with probability 1 above v, (k - g) / e at v, and 0
    below. A tie matters when g + e > k (more tied classes than places left)."""
    k = min(k, s.shape[1])
    kth = -np.partition(-s, k - 1, axis=1)[:, k - 1]
    above = (s > kth[:, None]).sum(axis=1)
    at = (s == kth[:, None]).sum(axis=1)
    true_score = s[np.arange(len(t)), t]
    hit = np.where(true_score > kth, 1.0, np.where(true_score == kth, (k - above) / at, 0.0))
    return hit, above + at > k


def top_k_accuracy(y_true: ArrayLike, scores: ArrayLike, k: int) -> float:
    """Fraction of samples whose true class is among the ``k`` highest scores.

    ``k`` is clipped to the number of classes. Ties count as the expected accuracy under
    random tie-breaking: when the k-th place is shared by ``e`` classes of which ``r``
    still fit in the top k, a true class among them scores ``r / e`` of a hit (for top-1:
    ``1 / e`` among ``e`` classes tied at the maximum). So no class index is favoured.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    raw = np.asarray(y_true)
    if raw.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {raw.shape}")
    s = _scores(scores, raw.shape[0])
    t = _labels(raw, s.shape[1], "y_true")
    if t.size == 0:
        raise ValueError("top_k_accuracy needs at least one sample")
    return float(np.mean(_expected_topk(t, s, k)[0]))


def top1_credit(y_true: ArrayLike, scores: ArrayLike) -> np.ndarray:
    """Per sample, the expected top-1 hit under random tie-breaking: 1 right, 0 wrong,
    1/e when the true class is one of e classes tied at the top score (the mean is
    ``top_k_accuracy(y_true, scores, 1)``)."""
    raw = np.asarray(y_true)
    if raw.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {raw.shape}")
    s = _scores(scores, raw.shape[0])
    return _expected_topk(_labels(raw, s.shape[1], "y_true"), s, 1)[0]


def expected_confusion_matrix(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``cm[t, p]``: expected count of samples of class ``t`` predicted as ``p`` when a tie
    at the top score is broken at random (each of ``e`` tied classes gets ``1/e`` of the
    sample). Integer-valued when nothing ties; every row of a sample sums to 1."""
    top = scores == scores.max(axis=1, keepdims=True)
    share = top / top.sum(axis=1, keepdims=True)
    cm = np.zeros((scores.shape[1], scores.shape[1]))
    np.add.at(cm, y_true, share)
    return cm


def _plain(cm: np.ndarray) -> list:
    """Counts as JSON lists: ints where every count is whole, else floats."""
    if np.all(cm == np.round(cm)):
        return cm.astype(np.int64).tolist()
    return cm.tolist()


def classification_metrics(
    y_true: ArrayLike, scores: ArrayLike, num_classes: int
) -> dict[str, Any]:
    """Accuracy, top-5, macro precision/recall, G-mean, tie rates and the confusion matrix.

    Returns a JSON-serialisable dict (plain floats, ints, lists; fractions in 0..1).

    Ties: integer (dequantized int8) outputs often give several classes the same top
    score. Every metric is its expectation under random tie-breaking: a sample whose top
    score is shared by ``e`` classes counts ``1/e`` towards each of them (in the confusion
    matrix, and so in accuracy, precision and recall); top-5 likewise (see
    :func:`top_k_accuracy`). Breaking ties towards the lowest class index instead would
    move top-1 by tenths of a point on int8 models.

    Averaging (scikit-learn's convention): macro precision, sensitivity and G-mean are
    taken over the classes that occur in ``y_true`` or are predicted; classes that do
    neither are left out. A class that is never predicted has precision 0; a predicted
    class absent from ``y_true`` has precision 0 and recall 0.

    - ``accuracy``: expected top-1 accuracy.
    - ``top5``: expected top-k accuracy with ``k = min(5, num_classes)``.
    - ``precision``, ``sensitivity`` (recall), ``g_mean`` (geometric mean of the recalls;
      exactly 0.0 when any of them is 0): macro over the classes above.
    - ``per_class_recall``, ``per_class_precision``: length ``num_classes``; None for a
      class neither present nor predicted (recall: also None for a class absent from
      ``y_true`` that is never predicted).
    - ``tie_rate``: fraction of samples whose top score is shared by several classes;
      ``top5_tie_rate``: fraction whose 5th place is shared across the top-5 boundary.
    - ``confusion_matrix``: rows = true, columns = predicted; expected counts (ints when
      nothing ties, else floats that are multiples of 1/e).
    - ``num_samples``: N.
    """
    t = _labels(y_true, num_classes, "y_true")
    s = _scores(scores, t.size, num_classes)
    if t.size == 0:
        raise ValueError("classification_metrics needs at least one sample")

    cm = expected_confusion_matrix(t, s)
    tp = np.diag(cm)
    support = np.bincount(t, minlength=num_classes)  # true samples per class
    predicted = cm.sum(axis=0)  # expected predictions per class
    counted = (support > 0) | (predicted > 0)  # scikit-learn: labels present or predicted

    def ratio(num: float, den: float) -> float:
        return float(num / den) if den > 0 else 0.0

    per_class_precision = [
        ratio(tp[c], predicted[c]) if counted[c] else None for c in range(num_classes)
    ]
    per_class_recall = [
        ratio(tp[c], support[c]) if counted[c] else None for c in range(num_classes)
    ]
    precisions = [p for p in per_class_precision if p is not None]  # non-empty: N >= 1
    recalls = [r for r in per_class_recall if r is not None]

    if any(r == 0.0 for r in recalls):
        g_mean = 0.0
    else:  # via logs: no underflow of the product for many classes
        g_mean = math.exp(math.fsum(math.log(r) for r in recalls) / len(recalls))

    top1, tied1 = _expected_topk(t, s, 1)
    top5, tied5 = _expected_topk(t, s, 5)
    return {
        "accuracy": min(1.0, float(math.fsum(top1) / t.size)),
        "top5": min(1.0, float(math.fsum(top5) / t.size)),
        "precision": min(1.0, math.fsum(precisions) / len(precisions)),
        "sensitivity": min(1.0, math.fsum(recalls) / len(recalls)),
        "g_mean": min(1.0, float(g_mean)),
        "tie_rate": float(np.mean(tied1)),
        "top5_tie_rate": float(np.mean(tied5)),
        "per_class_recall": per_class_recall,
        "per_class_precision": per_class_precision,
        "confusion_matrix": _plain(cm),
        "num_samples": int(t.size),
    }


def _count_label(count: float) -> str:
    """A cell's count: whole numbers as integers, expected (tie-shared) counts to 0.1."""
    return str(int(count)) if count == int(count) else f"{count:.1f}"


def plot_confusion_matrix(
    cm: ArrayLike,
    class_names: Sequence[str],
    path: str | Path,
    title: str,
) -> None:
    """Save a confusion-matrix heat map as a PNG at ``path``.

    Colours are row-normalised (fraction of each true class); cells are annotated
    with raw counts when there are at most 30 classes. Uses matplotlib's Agg
    canvas on a standalone Figure, so no pyplot or global backend state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(cm)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"cm must be a square 2-D matrix, got shape {counts.shape}")
    n = counts.shape[0]
    if len(class_names) != n:
        raise ValueError(f"got {len(class_names)} class names for a {n}x{n} matrix")

    row_sums = counts.sum(axis=1, keepdims=True).astype(np.float64)
    norm = np.divide(counts, row_sums, out=np.zeros(counts.shape), where=row_sums > 0)

    side = min(max(4.0, 0.5 * n + 2.0), 30.0)
    fig = Figure(figsize=(side + 1.0, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")

    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(class_names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticklabels(class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)

    if n <= _MAX_ANNOTATED_CLASSES:
        fontsize = 9 if n <= 12 else 6
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    _count_label(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if norm[i, j] > 0.5 else "black",
                )

    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, format="png")
    fig.clear()
