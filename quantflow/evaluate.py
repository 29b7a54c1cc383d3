"""Running a model variant over a test set: predictions, accuracy metrics, size, latency.

Every variant is measured the same way: scores for all test images in batches of
`batch_size` (timed: ms per image batched), then `latency_images` images one at a time
(timed: ms per image at batch 1), after a warm-up. TFLite models run in LiteRT.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from quantflow.errors import QuantflowError
from quantflow.metrics import classification_metrics


class TFLiteRunner:
    """A TFLite model in the LiteRT interpreter; quantizes inputs and dequantizes outputs
    with the model's own parameters when its input/output tensors are integer."""

    kind = "tflite"

    def __init__(self, path: str | Path, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interp = Interpreter(model_path=str(path), num_threads=int(threads))
        except (ValueError, RuntimeError) as e:
            raise QuantflowError(f"{path}: not a loadable TFLite model ({e})") from e
        self.input = self.interp.get_input_details()[0]
        self.output = self.interp.get_output_details()[0]
        self.batch = None

    def _resize(self, batch: int) -> None:
        if batch != self.batch:
            shape = [batch, *self.input["shape"][1:]]
            self.interp.resize_tensor_input(self.input["index"], shape)
            self.interp.allocate_tensors()
            self.batch = batch

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed float images in the model's input type: quantized with the
        input tensor's scale and zero point when that is an integer type."""
        dtype = np.dtype(self.input["dtype"])
        if dtype.kind == "f":
            return x.astype(dtype, copy=False)
        scale, zero = self.input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw outputs for a batch already in the input type (what a device runs)."""
        self._resize(len(batch))
        self.interp.set_tensor(self.input["index"], batch)
        self.interp.invoke()
        return self.interp.get_tensor(self.output["index"])

    def scores(self, y: np.ndarray) -> np.ndarray:
        """Raw outputs as float scores (dequantized when the output is an integer type)."""
        if np.dtype(self.output["dtype"]).kind == "f":
            return y.astype(np.float32)
        scale, zero = self.output["quantization"]
        return (y.astype(np.float32) - zero) * scale


class KerasRunner:
    """A Keras model called through one traced tf.function (no per-call Python overhead
    of `model.predict`)."""

    kind = "keras"

    def __init__(self, path: str | Path):
        import keras
        import tensorflow as tf

        try:
            self.model = keras.saving.load_model(str(path), compile=False)
        except (ValueError, OSError) as e:
            raise QuantflowError(f"{path}: not a loadable Keras model ({e})") from e
        self._fn = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def prepare(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32, copy=False)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(batch))

    def scores(self, y: np.ndarray) -> np.ndarray:
        return y


def load_runner(path: str | Path, threads: int = 1):
    suffix = Path(path).suffix
    if suffix == ".tflite":
        return TFLiteRunner(path, threads)
    if suffix == ".keras":
        return KerasRunner(path)
    raise QuantflowError(f"{path}: unknown model format {suffix!r} (expected .tflite or .keras)")


def predict(runner, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, float]:
    """Scores for all of `x` in batches; returns (scores, seconds). Only the model runs
    are timed: inputs are converted to the model's input type first, as a device would
    receive them. The last, smaller batch is padded so the model keeps one shape."""
    inputs = runner.prepare(x)
    runner.run(inputs[:batch_size])  # warm-up and allocation, not timed
    outputs = []
    start = time.perf_counter()
    for i in range(0, len(inputs), batch_size):
        chunk = inputs[i : i + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
        outputs.append(runner.run(chunk)[:n])
    seconds = time.perf_counter() - start
    return runner.scores(np.concatenate(outputs)), seconds


def latency_batch1(runner, x: np.ndarray, count: int, warmup: int = 10) -> float:
    """Mean milliseconds per image at batch size 1 over `count` images."""
    inputs = runner.prepare(x[: max(count, warmup)])
    for i in range(min(warmup, len(inputs))):
        runner.run(inputs[i : i + 1])
    count = min(count, len(inputs))
    start = time.perf_counter()
    for i in range(count):
        runner.run(inputs[i : i + 1])
    return 1000.0 * (time.perf_counter() - start) / max(count, 1)


def evaluate_model(path: str | Path, x: np.ndarray, y: np.ndarray, num_classes: int, *,
                   batch_size: int, latency_images: int, threads: int) -> dict:
    """Accuracy metrics, file size and latency of one model file on preprocessed `x`."""
    runner = load_runner(path, threads)
    scores, seconds = predict(runner, x, batch_size)
    record = classification_metrics(y, scores, num_classes)
    record.update(
        size_bytes=os.path.getsize(path),
        format=runner.kind,
        ms_per_image_batched=1000.0 * seconds / len(x),
        ms_per_image_b1=latency_batch1(runner, x, latency_images),
        batch_size=batch_size,
        latency_images=min(latency_images, len(x)),
        threads=threads,
    )
    if runner.kind == "tflite":
        record["input_dtype"] = np.dtype(runner.input["dtype"]).name
    return record
