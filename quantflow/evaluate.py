"""Running a model variant over a test set: predictions, accuracy metrics, size, latency.

Accuracy and timing are separate measurements (and separate workflow jobs): accuracy runs
over every test image in batches of `batch_size` and may share the machine; latency
(:func:`measure_latency`) times `latency_images` images one at a time (the median ms per
image at batch 1) and `latency_batches` batches of `batch_size` (the median ms per image
batched), after a warm-up, and is meant to run with nothing else on the cores. TFLite models run in LiteRT.
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
        import keras

        from quantflow import fakequant  # registers the fake-quant layers for loading
        from quantflow.fat import packed_size_bytes

        try:
            runner = KerasRunner(keras.saving.load_model(str(path), compile=False))
        except (ValueError, OSError, TypeError) as e:
            raise QuantflowError(f"{path}: not a loadable Keras model ({e})") from e
        if fakequant.weight_quantizers(runner.model):  # a FAT model in simulation
            runner.size_bytes, runner.size_kind = packed_size_bytes(runner.model), "packed"
            return runner
    elif suffix == ".pickle":
        from quantflow.weightquant import packed_size_bytes
        from quantflow.weights import load_weights, rebuild_model

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


def latency_batch1(runner, x: np.ndarray, count: int, warmup_s: float = 0.2) -> float:
    """Median milliseconds per image at batch size 1 over `count` images, each run timed
    on its own, after `warmup_s` seconds of untimed runs (a process's first tenths of a
    second run slower: thread pools, caches, clock). The median, not the mean, so that a
    few runs the OS delayed (a 0.03 ms model is easily preempted for a millisecond) do not
    decide the figure."""
    inputs = runner.prepare(x[: max(count, 1)])
    end = time.perf_counter() + warmup_s
    i = 0
    while time.perf_counter() < end or i < 10:
        runner.run(inputs[i % len(inputs) : i % len(inputs) + 1])
        i += 1
    times = []
    for i in range(min(count, len(inputs))):
        start = time.perf_counter()
        runner.run(inputs[i : i + 1])
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times)) if times else float("nan")


def latency_batched(runner, batches: list[np.ndarray]) -> float:
    """Median over the batches (each of the same size, after one untimed warm-up run) of
    milliseconds per image."""
    inputs = [runner.prepare(x) for x in batches]
    runner.run(inputs[0])
    times = []
    for batch in inputs:
        start = time.perf_counter()
        runner.run(batch)
        times.append((time.perf_counter() - start) / len(batch))
    return 1000.0 * float(np.median(times))


def evaluate_model(path: str | Path, split, num_classes: int, *, batch_size: int,
                   threads: int) -> dict:
    """Accuracy metrics and size of one model file on a prepared `Split` (not timed:
    see :func:`measure_latency`)."""
    runner = load_runner(path, threads)
    scores, labels, _ = predict(runner, split.numpy_batches(batch_size), batch_size)
    record = classification_metrics(labels, scores, num_classes)
    record.update(size_bytes=runner.size_bytes, size_kind=runner.size_kind,
                  format=runner.kind, batch_size=batch_size, threads=threads)
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
        out.update({f"{side}_dtype": dtype.name,
                    f"{side}_scale": None if scale is None else float(scale),
                    f"{side}_zero_point": None if zero is None else int(zero)})
    return out


def measure_latency(path: str | Path, split, *, batch_size: int, latency_images: int,
                    latency_batches: int, threads: int) -> dict:
    """Milliseconds per image of one model file: at batch 1, the median over the first
    `latency_images` test images run one at a time; batched, the median over the first
    `latency_batches` batches of `batch_size`; each after untimed warm-up runs. Only the
    model runs are timed."""
    runner = load_runner(path, threads)
    count = min(latency_images, len(split))
    images = min(len(split), batch_size * latency_batches)
    # a short last batch runs padded to full size, as in the evaluation
    batches = [split.take(np.resize(np.arange(i, min(i + batch_size, images)), batch_size))
               for i in range(0, images, batch_size)]
    return {
        "ms_per_image_b1": latency_batch1(runner, split.take(np.arange(count)), count),
        "ms_per_image_batched": latency_batched(runner, batches),
        "latency_images": count,
        "latency_batches": len(batches),
        "batch_size": batch_size,
        "threads": threads,
    }
