"""Runners: one interface (prepare, run, scores) over a LiteRT model, a Keras model and a
weight-only checkpoint, and `load_runner`, which picks one for a model file with the size
that file stands for."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from quantflow.deploy.litert import TFLiteRunner
from quantflow.errors import QuantflowError


class KerasRunner:
    """A Keras model called through one traced tf.function (no per-call Python overhead
    of `model.predict`)."""

    kind = "keras"

    def __init__(self, model):
        import tensorflow as tf

        self.model = model
        self._fn = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def prepare(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32, copy=False)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(batch))

    def scores(self, y: np.ndarray) -> np.ndarray:
        return y


def load_runner(path: str | Path, threads: int = 1):
    """A runner for a model file, with the size that file stands for: `size_bytes` is the
    file size, except for a weight-quantized pickle or a fake-quant Keras model, where it is
    the packed size of its quantized values (`size_kind` says which)."""
    suffix = Path(path).suffix
    if suffix == ".tflite":
        runner = TFLiteRunner(path, threads)
    elif suffix == ".keras":
        from quantflow.models.custom import load_keras
        from quantflow.quant import (
            calibrate as fakequant,  # registers the fake-quant layers for loading
        )
        from quantflow.quant.packed import packed_size_bytes

        runner = KerasRunner(load_keras(str(path)))  # custom layers: use_custom_code first
        if fakequant.weight_quantizers(runner.model):  # a FAT model in simulation
            runner.size_bytes, runner.size_kind = packed_size_bytes(runner.model), "packed"
            return runner
    elif suffix == ".pickle":
        from quantflow.formats.weights import load_weights, rebuild_model
        from quantflow.quant.weightonly.packed import packed_size_bytes

        data = load_weights(path)
        runner = KerasRunner(rebuild_model(data))
        runner.size_bytes, runner.size_kind = packed_size_bytes(data), "packed"
        return runner
    else:
        raise QuantflowError(
            f"{path}: unknown model format {suffix!r} (expected .tflite, .keras or .pickle)"
        )
    runner.size_bytes, runner.size_kind = os.path.getsize(path), "file"
    return runner


def predict(runner, batches, batch_size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Scores and labels for every (images, labels) batch of `batches`, and the seconds
    spent in the model alone: inputs are decoded and converted to the model's input type
    outside the timed calls, as a device would receive them. A last, smaller batch is
    padded so the model keeps one shape; the first batch runs once untimed (warm-up)."""
    scores, labels, seconds = [], [], 0.0
    warm = False
    for x, y in batches:
        inputs, n = runner.prepare(x), len(x)
        if n < batch_size:
            inputs = np.concatenate([inputs, np.repeat(inputs[-1:], batch_size - n, axis=0)])
        if not warm:
            runner.run(inputs)
            warm = True
        start = time.perf_counter()
        out = runner.run(inputs)
        seconds += time.perf_counter() - start
        scores.append(runner.scores(out[:n]))
        labels.append(np.asarray(y))
    if not scores:
        raise QuantflowError("nothing to evaluate: the test split is empty")
    return np.concatenate(scores), np.concatenate(labels), seconds
