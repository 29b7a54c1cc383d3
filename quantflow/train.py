"""Supervised training of a float classifier that keeps the best epoch on validation."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm


class TqdmProgress(keras.callbacks.Callback):
    """One progress bar over all training steps, refreshed sparsely so logs stay short."""

    def __init__(self, total_steps: int, stream=None):
        super().__init__()
        self.total_steps, self.stream = total_steps, stream

    def on_train_begin(self, logs=None):
        self.bar = tqdm(total=self.total_steps, unit="step", mininterval=10,
                        file=self.stream or sys.stderr, desc="train")

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        shown = ", ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items())
        self.bar.write(f"epoch {epoch + 1}: {shown}", file=self.stream or sys.stderr)

    def on_train_end(self, logs=None):
        self.bar.close()


class KeepBest(keras.callbacks.Callback):
    """Remembers the weights of the epoch with the best value of `monitor`."""

    def __init__(self, monitor: str = "val_accuracy"):
        super().__init__()
        self.monitor = monitor
        self.best, self.best_epoch, self.weights = -np.inf, -1, None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and value > self.best:
            self.best, self.best_epoch = value, epoch
            self.weights = self.model.get_weights()


def train_classifier(model, train, val, *, epochs: int, batch_size: int, learning_rate: float,
                     warmup_steps: int = 0, label_smoothing: float = 0.0, seed: int = 0,
                     log_stream=None) -> dict:
    """Train `model` (logits output) on preprocessed (x, y) arrays with Adam and a cosine
    schedule (linear warm-up), restore the best epoch on validation accuracy.

    Returns a summary: history per epoch, best epoch (1-based), seconds.
    """
    x, y = train
    steps_per_epoch = int(np.ceil(len(x) / batch_size))
    total = max(1, epochs * steps_per_epoch)
    warmup = min(int(warmup_steps), total // 2)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else learning_rate,
        decay_steps=max(1, total - warmup),
        warmup_target=learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    num_classes = model.output_shape[-1]
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    onehot = lambda labels: np.eye(num_classes, dtype=np.float32)[labels]  # noqa: E731
    keep_best = KeepBest()
    start = time.perf_counter()
    history = model.fit(
        x, onehot(y), batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0,
        validation_data=(val[0], onehot(val[1])), validation_batch_size=max(batch_size, 256),
        callbacks=[TqdmProgress(total, log_stream), keep_best],
    )
    seconds = time.perf_counter() - start
    if keep_best.weights is not None:
        model.set_weights(keep_best.weights)
    rows = [
        {"epoch": i + 1, **{k: float(v[i]) for k, v in history.history.items()}}
        for i in range(len(history.history.get("loss", [])))
    ]
    return {"history": rows, "best_epoch": keep_best.best_epoch + 1,
            "best_val_accuracy": float(keep_best.best), "seconds": seconds,
            "steps": total, "seed": seed}


def inference_copy(model):
    """The same architecture and weights without optimizer state (a smaller .keras file)."""
    clean = keras.Model.from_config(model.get_config())  # clone_model keeps the optimizer
    clean.set_weights(model.get_weights())
    return clean


def write_history_csv(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    fields = list(rows[0]) if rows else ["epoch"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
