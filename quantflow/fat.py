"""FAT threshold training (Goncharenko et al., arXiv 1812.07872): the alphas of a fake-quant
model (`quantflow.fakequant`) are trained, everything else frozen, so that its logits match
the float model's on unlabeled images.

Loss: RMSE between the float and the fake-quant logits per batch. Optimizer: Adam with a
cosine-annealed learning rate restarted every `reset_every` batches (SGDR warm restarts).
After every step the alphas are clipped into their bounds (the forward pass clips them
anyway; this keeps the stored values meaningful). The alphas with the lowest held-out RMSE
(the initial ones included) are kept.
"""

from __future__ import annotations

import os
import pickle
from itertools import islice
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from quantflow.errors import QuantflowError
from quantflow.fakequant import alpha_bounds, image_batches, weight_quantizers
from quantflow.safepickle import safe_load
from quantflow.schemes import parse_scheme, tflite_exportable  # noqa: F401 (re-exported)

THRESHOLDS_FORMAT = 1


def _rmse(a, b):
    return tf.sqrt(tf.reduce_mean(tf.square(tf.cast(a, tf.float32) - tf.cast(b, tf.float32))))


class _Evaluator:
    """The RMSE between the float and fake-quant logits over a fixed set of batches (the
    float logits computed once)."""

    def __init__(self, float_model, qmodel, images, batches: int | None = None, batch_size=32):
        self.qmodel = qmodel
        self.batches = [
            (x, np.asarray(float_model(x, training=False)))
            for x in image_batches(images, batches, batch_size)
        ]
        if not self.batches:
            raise QuantflowError("threshold training needs at least one validation batch")
        self._sq = tf.function(
            lambda x, t: tf.reduce_sum(tf.square(self.qmodel(x, training=False) - t)),
            reduce_retracing=True,
        )

    def __call__(self) -> float:
        total = sum(float(self._sq(x, t)) for x, t in self.batches)
        count = sum(t.size for _, t in self.batches)
        return float(np.sqrt(total / count))


def logits_rmse(
    float_model, qmodel, images, batches: int | None = None, batch_size: int = 32
) -> float:
    """RMSE between the float and fake-quant models' logits over `images` (an array, cut
    into `batch_size` batches, or an iterable of batches; at most `batches` of them)."""
    return _Evaluator(float_model, qmodel, images, batches, batch_size)()


def _epoch_batches(images, steps_per_epoch: int | None, batch_size: int, seed: int | None):
    """An iterator of epochs, each an iterator of image batches: full passes over `images`,
    or `steps_per_epoch` batches cycling through it. An array is cut into `batch_size`
    batches, reshuffled on every pass when `seed` is not None."""
    passes = _passes(images, batch_size, seed)
    if steps_per_epoch is None:
        yield from passes
    else:
        stream = _restarting(passes)
        while True:
            yield islice(stream, steps_per_epoch)


def _passes(images, batch_size: int, seed: int | None):
    rng = np.random.default_rng(seed)
    while True:
        if isinstance(images, np.ndarray) and seed is not None:
            yield image_batches(images[rng.permutation(len(images))], batch_size=batch_size)
        else:
            yield image_batches(images, batch_size=batch_size)


def _restarting(passes):
    for batches in passes:
        count = 0
        for batch in batches:
            count += 1
            yield batch
        if count == 0:
            raise QuantflowError("threshold training needs at least one batch of images")


def train_thresholds(
    float_model,
    qmodel,
    images_ds,
    *,
    epochs: int,
    learning_rate: float = 1e-3,
    reset_every: int = 400,
    steps_per_epoch: int | None = None,
    val_ds=None,
    batch_size: int = 32,
    seed: int | None = None,
    on_epoch=None,
    log_stream=None,
) -> dict:
    """Train the alphas of `qmodel` to match `float_model`'s logits on `images_ds` (an array,
    a tf.data.Dataset or an iterable of batches; (images, labels) batches are fine, the
    labels are ignored). `steps_per_epoch` None: one pass over the data per epoch (give it
    for an endless dataset). The alphas with the best RMSE on `val_ds` (held-out images;
    None: `images_ds` itself, then not held out and not endless) are restored at the end.
    Only the learning rate restarts every `reset_every` steps, not Adam's moments.
    Arrays are cut into `batch_size` batches (shuffled every pass when `seed` is given).
    `on_epoch(row, improved)` is called after every epoch, alphas as trained so far (e.g.
    to write checkpoints); `improved`: the held-out RMSE is the best yet.

    Returns {"history": [{"epoch", "train_rmse", "val_rmse", "learning_rate"}, ...],
    "initial_val_rmse", "final_val_rmse" (of the kept alphas), "best_epoch" (0: the initial
    alphas were best), "steps"}."""
    if epochs < 1 or reset_every < 1 or learning_rate <= 0:
        raise QuantflowError(
            "train_thresholds needs epochs >= 1, reset_every >= 1 and a " "positive learning_rate"
        )
    if steps_per_epoch is not None and steps_per_epoch < 1:
        raise QuantflowError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
    bounds = alpha_bounds(qmodel)
    if not bounds:
        raise QuantflowError(
            "the model has no threshold parameters to train; build it with "
            "quantflow.fakequant.fake_quant_model"
        )
    alphas = [variable for variable, _, _ in bounds]
    schedule = keras.optimizers.schedules.CosineDecayRestarts(
        learning_rate, first_decay_steps=reset_every, t_mul=1.0, m_mul=1.0, alpha=0.0
    )
    optimizer = keras.optimizers.Adam(learning_rate=schedule)
    optimizer.build(alphas)

    @tf.function(reduce_retracing=True)
    def step(x):
        target = float_model(x, training=False)
        with tf.GradientTape() as tape:
            loss = _rmse(qmodel(x, training=False), target)
        optimizer.apply_gradients(zip(tape.gradient(loss, alphas), alphas))
        for variable, low, high in bounds:
            variable.assign(tf.clip_by_value(variable, low, high))
        return loss

    validate = _Evaluator(
        float_model, qmodel, images_ds if val_ds is None else val_ds, batch_size=batch_size
    )
    initial = best = validate()
    best_values, best_epoch = [np.array(v.numpy()) for v in alphas], 0
    _log(
        log_stream,
        f"threshold training: {len(alphas)} alpha tensors, " f"initial val RMSE {initial:.6f}",
    )
    history, steps = [], 0
    for epoch, batches in zip(
        range(1, epochs + 1), _epoch_batches(images_ds, steps_per_epoch, batch_size, seed)
    ):
        losses = [float(step(tf.convert_to_tensor(x))) for x in batches]
        if not losses:
            raise QuantflowError("threshold training needs at least one batch of images")
        steps += len(losses)
        val = validate()
        row = {
            "epoch": epoch,
            "train_rmse": float(np.mean(losses)),
            "val_rmse": val,
            "learning_rate": float(schedule(steps)),
        }
        history.append(row)
        _log(
            log_stream,
            f"epoch {epoch}/{epochs}: train RMSE {row['train_rmse']:.6f}, "
            f"val RMSE {val:.6f}, lr {row['learning_rate']:.2e}",
        )
        improved = val < best
        if improved:
            best, best_epoch = val, epoch
            best_values = [np.array(v.numpy()) for v in alphas]
        if on_epoch is not None:
            on_epoch(row, improved)
    for variable, value in zip(alphas, best_values):
        variable.assign(value)
    _log(log_stream, f"kept the alphas of epoch {best_epoch}: val RMSE {best:.6f}")
    return {
        "history": history,
        "initial_val_rmse": initial,
        "final_val_rmse": best,
        "best_epoch": best_epoch,
        "steps": steps,
    }


def _log(stream, line: str) -> None:
    if stream is not None:
        print(line, file=stream, flush=True)


# --------------------------------------------------------------------------- files


def save_thresholds(path: str | Path, data: dict) -> None:
    """Pickle a thresholds record (plain dicts, lists and numbers, see `quantflow.fakequant.
    thresholds`) atomically; read it back with `load_thresholds`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump({"format": THRESHOLDS_FORMAT, **data}, f, protocol=5)
    os.replace(tmp, path)


def load_thresholds(path: str | Path) -> dict:
    """A thresholds pickle, through the restricted unpickler (nothing in it is executed)."""
    data = safe_load(path, what="thresholds file")
    if not isinstance(data, dict) or data.get("format") != THRESHOLDS_FORMAT:
        raise QuantflowError(
            f"{path}: not a quantflow thresholds file (format {THRESHOLDS_FORMAT})"
        )
    return data


def alpha_values(info: dict) -> dict[str, np.ndarray]:
    """All symmetric-threshold alphas of a `thresholds` dict, by kind ("weight": one per
    channel or tensor, "activation": one per tensor), as flat arrays (asymmetric ranges
    contribute their width alpha_R)."""
    values = {"weight": [], "activation": []}
    for row in info.values():
        alpha = row.get("alpha", row.get("alpha_r"))
        if alpha is not None:
            values[row["kind"]].append(np.ravel(np.asarray(alpha, dtype=np.float64)))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in values.items()}


def packed_size_bytes(qmodel) -> int:
    """Bytes of the quantized layers' parameters packed at their bit width: kernels at
    `bits` per value, biases and per-channel scales at 32 bits."""
    bits = 0
    for layer in weight_quantizers(qmodel):
        kernel = int(np.prod(layer.kernel.shape))
        scales = int(np.prod(layer.t_max.shape)) or 1
        bits += kernel * layer.bits + 32 * (int(np.prod(layer.bias.shape)) + scales)
    return (bits + 7) // 8
