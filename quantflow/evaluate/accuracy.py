"""Accuracy of a model variant over a test set: predictions, metrics, size and the I/O
quantization of a TFLite model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quantflow.metrics import classification_metrics
from quantflow.evaluate.paired import save_predictions
from quantflow.evaluate.runners import load_runner, predict


def evaluate_model(
    path: str | Path,
    split,
    num_classes: int,
    *,
    batch_size: int,
    threads: int,
    predictions: str | Path | None = None,
) -> dict:
    """Accuracy metrics and size of one model file on a prepared `Split` (not timed:
    see :func:`measure_latency`); with `predictions`, each image's top-1 class and credit
    are written there too (quantflow.evaluate.paired: the paired tests read them)."""
    runner = load_runner(path, threads)
    scores, labels, _ = predict(runner, split.numpy_batches(batch_size), batch_size)
    if predictions is not None:
        save_predictions(predictions, labels, scores)
    record = classification_metrics(labels, scores, num_classes)
    record.update(
        size_bytes=runner.size_bytes,
        size_kind=runner.size_kind,
        format=runner.kind,
        batch_size=batch_size,
        threads=threads,
    )
    if runner.kind == "tflite":
        record.update(io_quantization(runner))
    return record


def io_quantization(runner) -> dict:
    """A TFLite model's input and output types, with the scale and zero point the
    evaluator quantizes inputs and dequantizes outputs with (None for float tensors)."""
    out = {}
    for side, detail in (("input", runner.input), ("output", runner.output)):
        dtype = np.dtype(detail["dtype"])
        scale, zero = detail["quantization"] if dtype.kind in "iu" else (None, None)
        out.update(
            {
                f"{side}_dtype": dtype.name,
                f"{side}_scale": None if scale is None else float(scale),
                f"{side}_zero_point": None if zero is None else int(zero),
            }
        )
    return out
