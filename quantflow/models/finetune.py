"""Fine-tuning a classifier in stages: restore a checkpoint without its old head, train the
new head alone, then (part of) the network at a lower learning rate.

The recipe of the "Neural Networks Quantization" reference (TF-slim style): restore every
layer but the excluded scopes (`restore_weights(..., exclude=["logits"])`), train only the
trainable scopes (`set_trainable`), stage by stage (`fine_tune`), e.g.

    stages = [{"trainable": "head", "epochs": 2, "learning_rate": 1e-3},
              {"trainable": "all", "epochs": 3, "learning_rate": 1e-4}]

Scopes and exclude patterns match layer names as substrings (so a prefix such as "block6"
or "conv5_" selects a whole block); shell-style wildcards (`*`, `?`) work too.
"""

from __future__ import annotations

import fnmatch
import math
import time
from pathlib import Path

import keras
import numpy as np

from quantflow.distribute.strategy import is_multi_worker, replicas, scope, worker_failures
from quantflow.errors import QuantflowError

SCHEDULES = ("cosine", "constant", "exponential")
STAGE_KEYS = {"trainable", "epochs", "learning_rate", "schedule", "decay_rate", "warmup_steps"}
_POOLING = (
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.Flatten,
)


def leaf_layers(model) -> list:
    """The layers of `model`, with nested models replaced by their own layers."""
    return flatten_layers(model.layers)


def flatten_layers(layers: list) -> list:
    """`layers` with nested models replaced by their own layers (recursively)."""
    out = []
    for layer in layers:
        out.extend(leaf_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return out


def head_layers(model) -> list:
    """The classification head: the top-level layers after the last global pooling (or
    Flatten) that gives 2-D features, or after a nested backbone model; without either,
    the last Dense layer."""
    top = list(model.layers)
    cut = None
    for i, layer in enumerate(top):
        pooled = isinstance(layer, _POOLING) and len(layer.output.shape) == 2
        if pooled or isinstance(layer, keras.Model):
            cut = i
    if cut is not None and cut + 1 < len(top):
        return top[cut + 1 :]
    dense = [l for l in top if isinstance(l, keras.layers.Dense)]
    if not dense:
        raise QuantflowError(f"model {model.name!r} has no Dense head for the scope 'head'")
    return dense[-1:]


def matches(name: str, pattern: str) -> bool:
    """Whether layer `name` falls in scope `pattern` (substring or shell wildcard)."""
    return pattern in name or fnmatch.fnmatchcase(name, pattern)


def set_trainable(model, scopes: list[str] | str) -> list[str]:
    """Make only the layers in `scopes` trainable: "all", "head" (see `head_layers`), or a
    list of layer-name patterns (may include "head"). Frozen BatchNormalization layers run
    in inference mode (Keras 3 does so for trainable=False). Returns the names of the
    layers that now have trainable weights."""
    scopes = [scopes] if isinstance(scopes, str) else list(scopes)
    if not scopes:
        raise QuantflowError("trainable scopes are empty; use 'all', 'head' or layer-name patterns")
    model.trainable = True
    layers = leaf_layers(model)
    if "all" in scopes:
        chosen = {id(l) for l in layers}
    else:
        chosen = set()
        for scope in scopes:
            hits = (
                flatten_layers(head_layers(model))
                if scope == "head"
                else [l for l in layers if matches(l.name, scope)]
            )
            if not hits:
                raise QuantflowError(
                    f"trainable scope {scope!r} matches no layer of model {model.name!r}; use "
                    "'all', 'head' or part of a layer name (see model.summary())"
                )
            chosen.update(id(l) for l in hits)
    for layer in layers:
        layer.trainable = id(layer) in chosen
    return [l.name for l in layers if l.trainable and l.trainable_weights]


def checkpoint_weights(path) -> dict[str, list[np.ndarray]]:
    """Weights per layer name from a .keras model, a Keras 3 .weights.h5 file or a legacy
    Keras .h5 weights/model file (such as Keras' ImageNet files)."""
    path = Path(path)
    if not path.is_file():
        raise QuantflowError(f"checkpoint {path} not found")
    if path.suffix == ".keras":
        from quantflow.models.custom import load_keras

        source = load_keras(path)
        return {l.name: l.get_weights() for l in leaf_layers(source) if l.weights}
    if path.suffix == ".h5":
        return _h5_weights(path)
    raise QuantflowError(
        f"checkpoint {path}: use a .keras model or a .weights.h5 / .h5 weights file"
    )


def _h5_weights(path: Path) -> dict[str, list[np.ndarray]]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise QuantflowError(f"checkpoint {path}: not an HDF5 weights file ({e})") from e
    with f:
        group = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in group.attrs:  # legacy Keras 2 layout: one group per layer name
            out = {}
            for name in group.attrs["layer_names"]:
                name = name.decode() if isinstance(name, bytes) else str(name)
                names = [
                    n.decode() if isinstance(n, bytes) else str(n)
                    for n in group[name].attrs.get("weight_names", [])
                ]
                if names:
                    out[name] = [np.asarray(group[name][n]) for n in names]
            return out
        out = {}

        def visit(key, obj):  # Keras 3 layout: .../<class>/vars/<i>, layer name as attribute
            if key.split("/")[-1] == "vars" and isinstance(obj, h5py.Group) and len(obj):
                if "name" not in obj.attrs:
                    raise QuantflowError(
                        f"checkpoint {path}: stores no layer names (saved by an older Keras); "
                        "save the model as .keras instead"
                    )
                out[str(obj.attrs["name"])] = [np.asarray(obj[str(i)]) for i in range(len(obj))]

        f.visititems(visit)
        return out


def restore_weights(
    model, checkpoint_path, exclude: list[str] | tuple = ()
) -> tuple[list[str], list[str]]:
    """Copy weights from a checkpoint into `model` by layer name, skipping layers that match
    an `exclude` pattern (e.g. the old head, "logits") and layers the checkpoint lacks.
    Returns (restored layer names, skipped layer names)."""
    saved = checkpoint_weights(checkpoint_path)
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    restored, skipped = [], []
    for layer in leaf_layers(model):
        if not layer.weights:
            continue
        if any(matches(layer.name, p) for p in exclude) or layer.name not in saved:
            skipped.append(layer.name)
            continue
        values = saved[layer.name]
        want = [tuple(w.shape) for w in layer.weights]
        got = [tuple(v.shape) for v in values]
        if want != got:
            raise QuantflowError(
                f"checkpoint {checkpoint_path}: layer {layer.name!r} has weights of shapes {got}, "
                f"the model needs {want}; add it to exclude to train it from scratch"
            )
        layer.set_weights(values)
        restored.append(layer.name)
    if not restored:
        raise QuantflowError(
            f"checkpoint {checkpoint_path}: no layer name in common with model {model.name!r} "
            "(outside the excluded ones); is it a checkpoint of this architecture?"
        )
    return restored, skipped


@keras.saving.register_keras_serializable(package="quantflow")
class StageSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up over `warmup_steps`, then cosine decay to 0 at `total_steps`, a
    constant rate, or exponential decay by `decay_rate` per epoch (`steps_per_epoch`)."""

    def __init__(
        self,
        learning_rate: float,
        total_steps: int,
        steps_per_epoch: int,
        schedule: str = "cosine",
        decay_rate: float = 0.94,
        warmup_steps: int = 0,
    ):
        self.learning_rate, self.total_steps = float(learning_rate), int(total_steps)
        self.steps_per_epoch, self.schedule = int(steps_per_epoch), schedule
        self.decay_rate, self.warmup_steps = float(decay_rate), int(warmup_steps)

    def __call__(self, step):
        from keras import ops

        step = ops.cast(step, "float32")
        warm = float(max(1, self.warmup_steps))
        after = ops.maximum(step - self.warmup_steps, 0.0)
        if self.schedule == "cosine":
            span = float(max(1, self.total_steps - self.warmup_steps))
            rate = 0.5 * (1.0 + ops.cos(math.pi * ops.minimum(after / span, 1.0)))
        elif self.schedule == "exponential":
            rate = ops.power(self.decay_rate, after / float(max(1, self.steps_per_epoch)))
        else:
            rate = ops.ones_like(step)
        ramp = ops.minimum((step + 1.0) / warm, 1.0) if self.warmup_steps else 1.0
        return self.learning_rate * rate * ramp

    def get_config(self) -> dict:
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "schedule": self.schedule,
            "decay_rate": self.decay_rate,
            "warmup_steps": self.warmup_steps,
        }


def check_stage(stage: dict, index: int) -> dict:
    """A stage with defaults filled in, or a QuantflowError naming what is wrong."""
    where = f"fine-tuning stage {index}"
    if not isinstance(stage, dict):
        raise QuantflowError(f"{where} must be a mapping with epochs and learning_rate")
    unknown = set(stage) - STAGE_KEYS
    if unknown:
        raise QuantflowError(f"{where}: unknown keys {sorted(unknown)}; use {sorted(STAGE_KEYS)}")
    out = {"trainable": "all", "schedule": "cosine", "decay_rate": 0.94, "warmup_steps": 0, **stage}
    for key in ("epochs", "learning_rate"):
        if key not in stage:
            raise QuantflowError(f"{where}: missing {key}")
    if int(out["epochs"]) < 1 or float(out["learning_rate"]) <= 0:
        raise QuantflowError(f"{where}: epochs must be >= 1 and learning_rate > 0")
    if out["schedule"] not in SCHEDULES:
        raise QuantflowError(
            f"{where}: unknown schedule {out['schedule']!r}; choose one of {', '.join(SCHEDULES)}"
        )
    return out


def fine_tune(
    model, train_ds, val_ds, *, stages: list[dict], log_stream=None, strategy=None
) -> dict:
    """Train `model` (logits output) stage by stage on tf.data datasets of (images, int
    labels) batches: each stage sets its trainable scopes and compiles a fresh Adam with its
    schedule and sparse categorical cross-entropy from logits. The epoch with the best
    validation accuracy over all stages is restored at the end.

    Returns {"history": rows of stage, epoch (within the stage), loss, accuracy, val_loss,
    val_accuracy; "best": {"stage", "epoch", "val_accuracy"}; "seconds"; "stages": the
    stages with defaults and their trainable layer names}.

    `strategy`: the tf.distribute strategy `model` was built under (quantflow.distribute;
    None: the default). With several replicas each global batch of `train_ds` is split
    among them (Keras' fit), the loss averaged over the global batch, and BatchNorm layers
    compute their batch statistics over all replicas (synchronized) while training.
    Several workers (MultiWorkerMirroredStrategy): Keras 3's fit does not run under it
    (keras-team/keras#20585), so `fit_workers` trains them the same way (see there).
    """
    from quantflow.models.callbacks import KeepBest, TqdmProgress

    if not stages:
        raise QuantflowError("fine-tuning needs at least one stage")
    stages = [check_stage(s, i + 1) for i, s in enumerate(stages)]
    steps = _steps_per_epoch(train_ds)
    monitor = "val_accuracy" if val_ds is not None else "accuracy"
    best = {"stage": 0, "epoch": 0, monitor: -np.inf}
    best_weights, rows, summary = None, [], []
    synced = _synchronize_batchnorm(model) if replicas(strategy) > 1 else []
    start = time.perf_counter()
    for number, stage in enumerate(stages, start=1):
        trainable = set_trainable(model, stage["trainable"])
        total = steps * int(stage["epochs"])
        schedule = StageSchedule(
            stage["learning_rate"],
            total,
            steps,
            stage["schedule"],
            stage["decay_rate"],
            min(int(stage["warmup_steps"]), total // 2),
        )
        with scope(strategy):  # the optimizer's variables mirrored as the model's
            model.compile(
                optimizer=keras.optimizers.Adam(schedule),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            )
        if log_stream is not None:
            print(
                f"stage {number}: {len(trainable)} trainable layers, {stage['epochs']} epochs, "
                f"lr {stage['learning_rate']} ({stage['schedule']})",
                file=log_stream,
            )
        keep = KeepBest(monitor)
        callbacks = [TqdmProgress(total, log_stream), keep]
        if is_multi_worker(strategy):
            with worker_failures(strategy, "fine-tuning starts again from its first epoch"):
                history = fit_workers(
                    model, train_ds, val_ds, int(stage["epochs"]), strategy, callbacks
                )
        else:
            history = model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=int(stage["epochs"]),
                shuffle=False,
                verbose=0,
                callbacks=callbacks,
            ).history
        for i in range(len(history.get("loss", []))):
            rows.append(
                {"stage": number, "epoch": i + 1, **{k: float(v[i]) for k, v in history.items()}}
            )
        if keep.weights is not None and keep.best > best[monitor]:
            best = {"stage": number, "epoch": keep.best_epoch + 1, monitor: float(keep.best)}
            best_weights = keep.weights
        summary.append({**stage, "trainable_layers": trainable})
    if best_weights is not None:
        model.set_weights(best_weights)
    for layer in synced:  # the saved model is the single-device one
        layer.synchronized = False
    return {
        "history": rows,
        "best": best,
        "seconds": time.perf_counter() - start,
        "stages": summary,
    }


def fit_workers(model, train_ds, val_ds, epochs: int, strategy, callbacks) -> dict:
    """`model.fit` for a multi-worker strategy, which Keras 3's fit does not run
    (keras-team/keras#20585): the compiled model's optimizer, loss (sparse categorical
    cross-entropy on logits, averaged over the global batch, plus the model's own losses)
    and accuracy, epoch by epoch, with the callbacks' epoch and batch hooks; returns
    fit's history dict (loss, accuracy, val_loss, val_accuracy: means over the images).

    Every worker reads the same batches (the same seeded shuffle) and each replica takes
    its part of every global batch, as FAT and adjustable do; gradients are summed over
    the replicas by the optimizer, so each step is the global batch's."""
    import tensorflow as tf

    n = strategy.num_replicas_in_sync
    optimizer = model.optimizer
    with scope(strategy):
        optimizer.build(model.trainable_variables)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def sums(x, y, training):
        """Per-replica sums: loss, correct predictions, images, and the global count."""
        logits = model(x, training=training)
        losses = cross_entropy(y, logits)
        count = tf.cast(tf.shape(y)[0], tf.float32)
        total = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, count)
        predicted = tf.argmax(logits, -1, output_type=y.dtype)
        hits = tf.cast(tf.equal(predicted, y), tf.float32)
        return tf.reduce_sum(losses), tf.reduce_sum(hits), count, total

    def replica_train(x, y):
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            loss, hits, count, total = sums(x, y, True)
            extra = tf.add_n(model.losses) / n if model.losses else 0.0
            objective = loss / total + extra  # summed over the replicas: the global loss
        optimizer.apply_gradients(zip(tape.gradient(objective, variables), variables))
        return loss + extra * total, hits, count

    def replica_eval(x, y):
        return sums(x, y, False)[:3]

    def run(fn):
        step = tf.function(lambda x, y: strategy.run(fn, args=(x, y)), reduce_retracing=True)

        def call(x, y):
            parts = [np.array_split(np.asarray(v), n) for v in (x, y)]
            shards = [
                strategy.experimental_distribute_values_from_function(
                    lambda context, p=p: tf.constant(p[context.replica_id_in_sync_group])
                )
                for p in parts
            ]
            return [
                strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in step(*shards)
            ]

        return call

    def totals(fn, dataset, hook=None):
        loss = hits = count = 0.0
        for i, (x, y) in enumerate(dataset):
            values = fn(x, y)
            loss, hits, count = (a + float(b) for a, b in zip((loss, hits, count), values))
            if hook is not None:
                hook(i)
        return loss / count, hits / count

    train_step, eval_step = run(replica_train), run(replica_eval)
    for cb in callbacks:
        cb.set_model(model)
        cb.on_train_begin()
    history = {}
    for epoch in range(epochs):
        logs = dict(
            zip(
                ("loss", "accuracy"),
                totals(
                    train_step,
                    train_ds,
                    lambda i: [cb.on_train_batch_end(i) for cb in callbacks],
                ),
            )
        )
        if val_ds is not None:
            logs.update(zip(("val_loss", "val_accuracy"), totals(eval_step, val_ds)))
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
    for cb in callbacks:
        cb.on_train_end()
    return history


def _synchronize_batchnorm(model) -> list:
    """BatchNormalization layers made to take batch statistics over all replicas (Keras'
    `synchronized`, TensorFlow backend); returns those changed."""
    changed = [
        layer
        for layer in leaf_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized
    ]
    for layer in changed:
        layer.synchronized = True
    return changed


def _steps_per_epoch(dataset) -> int:
    """Batches per epoch of a finite tf.data dataset (counted when unknown)."""
    import tensorflow as tf

    n = int(dataset.cardinality())
    if n == tf.data.INFINITE_CARDINALITY:
        raise QuantflowError("the training dataset is infinite; end it (no .repeat()) per epoch")
    if n < 0:
        n = int(dataset.reduce(0, lambda count, _: count + 1))
    if n == 0:
        raise QuantflowError("the training dataset is empty")
    return n
