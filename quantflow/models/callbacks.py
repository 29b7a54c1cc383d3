"""Training helpers: progress in the log, the best epoch kept, a clean model to save.
The training loop itself is quantflow.models.finetune.fine_tune."""

from __future__ import annotations

import csv
import sys
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
        self.bar = tqdm(
            total=self.total_steps,
            unit="step",
            mininterval=10,
            file=self.stream or sys.stderr,
            desc="train",
        )

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


def inference_copy(model):
    """The same architecture and weights without optimizer state (a smaller .keras file).
    Rebuilt by the model's own class (`keras.Model.from_config` only reads functional
    configs: a Sequential model, the usual user's model, failed there); a subclassed model
    without a config is returned as it is."""
    try:
        clean = type(model).from_config(model.get_config())  # clone_model keeps the optimizer
    except NotImplementedError:  # a subclassed model without get_config
        return model
    clean.set_weights(model.get_weights())
    return clean


def write_history_csv(path: str | Path, rows: list[dict]) -> None:
    """Write per-epoch rows (dicts with the same keys) to a CSV file at `path`."""
    path = Path(path)
    fields = list(rows[0]) if rows else ["epoch"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
