"""Is one variant's top-1 better than another's on the same test images, or is it a tie?

Two variants evaluated on the same images differ only on the images where their per-image
credit differs (the tie-aware top-1 credit: 1 right, 0 wrong, 1/e when the true class is
one of e classes tied at the top). Under the null hypothesis that neither is better, each
such difference is as likely to have either sign. The test is exact:

- every difference is +-1 (no tied outputs among the differing images): McNemar's exact
  test, the two-sided binomial test of b images only A gets right against c only B gets
  right, p = min(1, 2 P(Bin(b + c, 1/2) <= min(b, c)));
- some differences are fractional: the exact sign-flip (permutation) test of their sum,
  p = P(|sum of +-d_i| >= |observed sum|) over the 2^n equally likely sign patterns,
  computed exactly by convolving the distributions of the distinct |d| values.

(For +-1 differences the two are the same test.) A difference is a win when p < alpha.

    result = paired_test(credit_a, credit_b, alpha=0.05)
    result["p"], result["differ"], result["significant"]
"""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np

MCNEMAR = "McNemar exact"
SIGN_FLIP = "exact sign-flip"


def save_predictions(path: str | Path, labels, scores) -> None:
    """predictions.npz beside metrics.json: the test labels, each image's top-1 class
    (lowest index among tied classes), its tie-aware top-1 credit and the outputs
    themselves (float32: the fidelity to another variant, `output_snr_db`)."""
    import io

    from quantflow.formats.atomic import write_atomic
    from quantflow.metrics import top1_credit

    scores = np.asarray(scores)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        labels=np.asarray(labels, dtype=np.int32),
        top1=np.argmax(scores, axis=1).astype(np.int32),
        credit=top1_credit(labels, scores).astype(np.float64),
        scores=scores.astype(np.float32),
    )
    write_atomic(Path(path), buffer.getbuffer())


def load_predictions(path: str | Path) -> dict:
    """A predictions.npz as {labels, top1, credit, scores} arrays (scores None in a file
    written before they were saved)."""
    with np.load(path) as data:
        out = {k: data[k] for k in ("labels", "top1", "credit")}
        out["scores"] = data["scores"] if "scores" in data else None
    return out


def output_snr_db(scores, reference) -> float | None:
    """The reference's output power over the power of the difference, in dB, over all
    images and classes: 10 log10(sum r^2 / sum (s - r)^2). None when the outputs are
    equal (no noise) or either is missing."""
    if scores is None or reference is None:
        return None
    scores, reference = np.asarray(scores, np.float64), np.asarray(reference, np.float64)
    if scores.shape != reference.shape:
        return None
    noise = float(np.sum((scores - reference) ** 2))
    if noise == 0.0:
        return None
    return float(10.0 * np.log10(np.sum(reference**2) / noise))


def paired_test(credit_a, credit_b, *, alpha: float = 0.05) -> dict:
    """The exact paired test of two per-image credit arrays over the same images (see the
    module doc): {"test", "differ" (images whose credit differs), "a_better", "b_better"
    (how many of them favour each), "delta_images" (sum of A - B credit), "p",
    "significant" (p < alpha)}."""
    a = np.asarray(credit_a, dtype=np.float64)
    b = np.asarray(credit_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"paired_test needs two 1-D arrays of one length, got {a.shape}, {b.shape}"
        )
    d = a - b
    d = d[np.abs(d) > 1e-12]
    unit = bool(np.all(np.isclose(np.abs(d), 1.0)))
    p = _mcnemar(int(np.sum(d > 0)), int(np.sum(d < 0))) if unit else _sign_flip(d)
    return {
        "test": MCNEMAR if unit else SIGN_FLIP,
        "differ": int(d.size),
        "a_better": int(np.sum(d > 0)),
        "b_better": int(np.sum(d < 0)),
        "delta_images": float(np.sum(d)),
        "p": p,
        "significant": bool(p < alpha),
    }


def _mcnemar(b: int, c: int) -> float:
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, float(Fraction(2 * tail, 2**n)))


def _sign_flip(d: np.ndarray) -> float:
    """P(|sum of +-d_i| >= |sum d_i|) with independent fair signs, exactly: the |d_i| as
    integers on a common grid, the distribution of each distinct value's m copies
    (binomial), convolved."""
    fractions = [Fraction(float(x)).limit_denominator(10_000) for x in np.abs(d)]
    scale = math.lcm(*(f.denominator for f in fractions))
    ints = [int(f * scale) for f in fractions]
    observed = abs(sum(k if x > 0 else -k for k, x in zip(ints, d)))
    dist = np.ones(1)  # over sums -T..T (offset T); starts at 0
    for value, m in sorted(Counter(ints).items()):
        pmf = np.array([math.comb(m, j) for j in range(m + 1)], dtype=np.float64) / 2.0**m
        kernel = np.zeros(2 * value * m + 1)
        kernel[:: 2 * value] = pmf  # value * (2j - m), j ones of m
        dist = _convolve(dist, kernel)
    total = (dist.size - 1) // 2
    sums = np.arange(-total, total + 1)
    p = float(dist[np.abs(sums) >= observed].sum())
    return min(1.0, max(p, 0.0))


def _convolve(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if x.size * y.size <= 4_000_000:
        return np.convolve(x, y)
    n = x.size + y.size - 1
    size = 1 << (n - 1).bit_length()
    out = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(y, size), size)[:n]
    return np.clip(out, 0.0, None)
