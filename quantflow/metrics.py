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
    "top_k_accuracy",
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
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(
            arr == np.round(arr)
        ):
            raise ValueError(
                f"{name} must hold integer class labels, got dtype {arr.dtype}"
            )
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
        raise ValueError(
            f"scores has {arr.shape[1]} columns but num_classes is {num_classes}"
        )
    if arr.shape[1] < 1:
        raise ValueError("scores must have at least one column (class)")
    if not np.all(np.isfinite(arr)):
        raise ValueError("scores contain NaN or infinite values")
    return arr


def confusion_matrix(
    y_true: ArrayLike, y_pred: ArrayLike, num_classes: int
) -> np.ndarray:
    """Count matrix ``cm[t, p]``: samples of true class ``t`` predicted as ``p``.

    Returns an int64 array of shape ``(num_classes, num_classes)``; it sums to N.
    Raises ValueError for a label outside ``0..num_classes-1`` or unequal lengths.
    """
    t = _labels(y_true, num_classes, "y_true")
    p = _labels(y_pred, num_classes, "y_pred")
    if t.shape != p.shape:
        raise ValueError(
            f"y_true has {t.size} labels but y_pred has {p.size}; they must match"
        )
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def top_k_accuracy(y_true: ArrayLike, scores: ArrayLike, k: int) -> float:
    """Fraction of samples whose true class is among the ``k`` highest scores.

    ``k`` is clipped to the number of classes. Ties are broken deterministically
    by class index: the top k are ``np.argsort(-scores, kind="stable")[:, :k]``,
    so among equal scores the lower class index ranks first.
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
    k = min(k, s.shape[1])
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == t[:, None], axis=1)))


def classification_metrics(
    y_true: ArrayLike, scores: ArrayLike, num_classes: int
) -> dict[str, Any]:
    """Accuracy, top-5, macro precision/recall, G-mean and the confusion matrix.

    Returns a JSON-serialisable dict (plain floats, ints, lists; fractions in 0..1):

    - ``accuracy``: top-1 accuracy (argmax of scores; ties go to the lower index).
    - ``top5``: top-k accuracy with ``k = min(5, num_classes)``.
    - ``precision``: macro mean over *all* classes of TP/(TP+FP). By convention a
      class that is never predicted has precision 0.0 and still counts in the mean.
    - ``sensitivity``: macro recall, mean of TP/(TP+FN) over the classes that occur
      in ``y_true`` (absent classes have no recall and are left out).
    - ``g_mean``: geometric mean of those same per-class recalls; exactly 0.0 when
      any of them is 0.
    - ``per_class_recall``: length ``num_classes``; None for a class absent from y_true.
    - ``per_class_precision``: length ``num_classes``; 0.0 for never-predicted classes.
    - ``confusion_matrix``: nested lists of ints, rows = true, columns = predicted.
    - ``num_samples``: N.
    """
    t = _labels(y_true, num_classes, "y_true")
    s = _scores(scores, t.size, num_classes)
    if t.size == 0:
        raise ValueError("classification_metrics needs at least one sample")

    pred = np.argmax(s, axis=1)
    cm = confusion_matrix(t, pred, num_classes)
    tp = np.diag(cm)
    support = cm.sum(axis=1)  # true samples per class
    predicted = cm.sum(axis=0)  # predictions per class

    per_class_precision = [
        float(tp[c] / predicted[c]) if predicted[c] > 0 else 0.0
        for c in range(num_classes)
    ]
    per_class_recall: list[float | None] = [
        float(tp[c] / support[c]) if support[c] > 0 else None
        for c in range(num_classes)
    ]
    present = [r for r in per_class_recall if r is not None]  # non-empty: N >= 1

    if any(r == 0.0 for r in present):
        g_mean = 0.0
    else:  # via logs: no underflow of the product for many classes
        g_mean = math.exp(math.fsum(math.log(r) for r in present) / len(present))

    return {
        "accuracy": float(tp.sum() / t.size),
        "top5": top_k_accuracy(t, s, min(5, num_classes)),
        "precision": float(np.mean(per_class_precision)),
        "sensitivity": float(math.fsum(present) / len(present)),
        "g_mean": min(1.0, float(g_mean)),
        "per_class_recall": per_class_recall,
        "per_class_precision": per_class_precision,
        "confusion_matrix": cm.tolist(),
        "num_samples": int(t.size),
    }


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
                    str(int(counts[i, j])),
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
