"""FAT threshold training (Goncharenko et al., arXiv 1812.07872): the alphas of a fake-quant
model (`quantflow.quant.transform`) are trained, everything else frozen, so that its logits match
the float model's on unlabeled images.

Loss (`loss`): "rmse", the RMSE between the float and the fake-quant logits per batch, or
"smooth_l1", the reference's: per image the sum over logits of sqrt(d^2 + 1e-5) (a smoothed
|d|), averaged over the batch. Optimizer: Adam; `reset` says what restarts every
`reset_every` batches: "lr", only the learning rate, cosine-annealed to zero in each period
(SGDR warm restarts, Adam's moments kept), or "adam", Adam itself as the reference does it
(its moments and step count re-initialised; the learning rate lr * exp(-1e-4 * step) *
|cos(pi * k / (4 * reset_every))| + 1e-7, k the batches since the last reset). After every
step the alphas are clipped into their bounds (the forward pass clips them anyway; this
keeps the stored values meaningful). Whatever the loss, the alphas with the lowest held-out
RMSE (the initial ones included) are kept.

Under a tf.distribute strategy with several replicas (`strategy`, quantflow.distribute),
each global batch is split among the replicas and the step computes the loss of the
global batch: each replica's sum of squares (or smooth-L1 terms) is all-reduced, and
its gradient is taken of a surrogate whose sum over replicas has the global loss's
gradient (RMSE: local sum of squares / (2 n RMSE), n and RMSE global), which Keras'
optimizer sums across replicas. Learning-rate changes, Adam resets and the clipping run
once, in the cross-replica context, on the mirrored variables. With one replica the step
is the single-device one, unchanged.
"""

from __future__ import annotations

from itertools import islice

import keras
import numpy as np
import tensorflow as tf

from quantflow.distribute.resume import optimizer_state, restore_variables, variable_arrays
from quantflow.distribute.strategy import replicas, scope
from quantflow.errors import QuantflowError
from quantflow.quant.calibrate import alpha_bounds, image_batches

LOSSES = ("rmse", "smooth_l1")


RESETS = ("lr", "adam")


SMOOTH_L1_EPSILON = 1e-5  # the reference's: sqrt(d^2 + 1e-5)


REFERENCE_LR_DECAY = 1e-4  # the reference's learning_rate_decay (per batch, exponential)


def _rmse(a, b):
    return tf.sqrt(tf.reduce_mean(tf.square(tf.cast(a, tf.float32) - tf.cast(b, tf.float32))))


def smooth_l1(a, b, epsilon: float = SMOOTH_L1_EPSILON):
    """The FAT reference's loss between two batches of logits: per image the sum over the
    last axis of sqrt((a - b)^2 + epsilon), averaged over the rest (a smoothed L1 that is
    differentiable at 0; not Huber)."""
    d = tf.cast(a, tf.float32) - tf.cast(b, tf.float32)
    return tf.reduce_mean(tf.reduce_sum(tf.sqrt(tf.square(d) + epsilon), axis=-1))


_LOSS_FUNCTIONS = {"rmse": _rmse, "smooth_l1": smooth_l1}


def _adam(learning_rate: float):
    """The optimizer of threshold training (a seam for tests)."""
    return keras.optimizers.Adam(learning_rate=learning_rate)


def _reset_adam(optimizer) -> None:
    """Re-initialise Adam as a new one would start: step count and moments zero."""
    for variable in optimizer_state(optimizer):
        variable.assign(tf.zeros(variable.shape, variable.dtype))


def _learning_rate_at(reset: str, learning_rate: float, reset_every: int, step: int) -> float:
    """The learning rate of batch `step` (0-based, counted over the whole training)."""
    k = step % reset_every
    if reset == "lr":  # Keras' CosineDecayRestarts with t_mul = m_mul = 1, alpha = 0
        return float(learning_rate * 0.5 * (1.0 + np.cos(np.pi * k / reset_every)))
    return float(
        learning_rate
        * np.exp(-REFERENCE_LR_DECAY * step)
        * abs(np.cos(np.pi * k / (4 * reset_every)))
        + 1e-7
    )


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
    loss: str = "rmse",
    reset: str = "lr",
    strategy=None,
    resume=None,
) -> dict:
    """Train the alphas of `qmodel` to match `float_model`'s logits on `images_ds` (an array,
    a tf.data.Dataset or an iterable of batches; (images, labels) batches are fine, the
    labels are ignored). `steps_per_epoch` None: one pass over the data per epoch (give it
    for an endless dataset). The alphas with the best RMSE on `val_ds` (held-out images;
    None: `images_ds` itself, then not held out and not endless) are restored at the end,
    whichever `loss` trains them ("rmse" or the reference's "smooth_l1", see the module).
    `reset` "lr": only the cosine-annealed learning rate restarts every `reset_every`
    steps, Adam's moments are kept; "adam": Adam's moments and step count are
    re-initialised every `reset_every` steps, under the reference's learning rate.
    Arrays are cut into `batch_size` batches (shuffled every pass when `seed` is given);
    with a `strategy` of several replicas, `batch_size` is the global batch, split among
    them (see the module doc; the models must have been built under it).
    `resume` (a quantflow.distribute.resume.ResumeState, or None): after every epoch the
    training state (alphas, the kept alphas, Adam's state, history) is saved there, and a
    run that finds a state goes on after its epoch, as the killed run would have.
    `on_epoch(row, improved)` is called after every epoch, alphas as trained so far (e.g.
    to write checkpoints); `improved`: the held-out RMSE is the best yet.

    Returns {"history": [{"epoch", "train_rmse" (the training batches' RMSE, whatever the
    loss), "val_rmse", "learning_rate" (of the next step)}, ...],
    "initial_val_rmse", "final_val_rmse" (of the kept alphas), "best_epoch" (0: the initial
    alphas were best), "steps"}."""
    if epochs < 1 or reset_every < 1 or learning_rate <= 0:
        raise QuantflowError(
            "train_thresholds needs epochs >= 1, reset_every >= 1 and a " "positive learning_rate"
        )
    if steps_per_epoch is not None and steps_per_epoch < 1:
        raise QuantflowError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
    if loss not in LOSSES or reset not in RESETS:
        raise QuantflowError(
            f"threshold training: loss must be one of {', '.join(LOSSES)} (got {loss!r}) and "
            f"reset one of {', '.join(RESETS)} (got {reset!r})"
        )
    bounds = alpha_bounds(qmodel)
    if not bounds:
        raise QuantflowError(
            "the model has no threshold parameters to train; build it with "
            "quantflow.quant.transform.fake_quant_model"
        )
    alphas = [variable for variable, _, _ in bounds]
    with scope(strategy):
        optimizer = _adam(learning_rate)
        optimizer.build(alphas)
    loss_fn = _LOSS_FUNCTIONS[loss]

    @tf.function(reduce_retracing=True)
    def step(x, rate):
        target = float_model(x, training=False)
        with tf.GradientTape() as tape:
            output = qmodel(x, training=False)
            value = loss_fn(output, target)
        optimizer.learning_rate.assign(rate)
        optimizer.apply_gradients(zip(tape.gradient(value, alphas), alphas))
        for variable, low, high in bounds:
            variable.assign(tf.clip_by_value(variable, low, high))
        return _rmse(output, target)

    if replicas(strategy) > 1:
        step = _distributed_step(strategy, float_model, qmodel, optimizer, bounds, loss)

    def rate(n: int):
        return tf.constant(_learning_rate_at(reset, learning_rate, reset_every, n), tf.float32)

    validate = _Evaluator(
        float_model, qmodel, images_ds if val_ds is None else val_ds, batch_size=batch_size
    )
    history, steps, done = [], 0, 0
    saved = resume.load() if resume is not None else None
    if saved is None:
        initial = best = validate()
        best_values, best_epoch = [np.array(v.numpy()) for v in alphas], 0
    else:  # the initial RMSE and the kept alphas as saved: no validation pass again
        meta, arrays = saved
        done, steps, history = meta["epoch"], meta["steps"], meta["history"]
        initial, best, best_epoch = meta["initial"], meta["best"], meta["best_epoch"]
        restore_variables("alpha", alphas, arrays)
        restore_variables("adam", optimizer_state(optimizer), arrays)
        best_values = [arrays[f"best/{i}"] for i in range(len(alphas))]
    _log(
        log_stream,
        f"threshold training: {len(alphas)} alpha tensors, {loss} loss, Adam with {reset} "
        f"reset every {reset_every} batches; initial val RMSE {initial:.6f}",
    )
    if saved is not None:
        _log(log_stream, f"resumed after epoch {done} (step {steps}) from {resume.path}")
    epoch_batches = _epoch_batches(images_ds, steps_per_epoch, batch_size, seed)
    for _ in range(done):  # the epochs already trained: their batches drawn, not run
        for _ in next(epoch_batches):
            pass
    for epoch, batches in zip(range(done + 1, epochs + 1), epoch_batches):
        losses = []
        for x in batches:
            losses.append(float(step(tf.convert_to_tensor(x), rate(steps))))
            steps += 1
            if reset == "adam" and steps % reset_every == 0:
                _reset_adam(optimizer)
        if not losses:
            raise QuantflowError("threshold training needs at least one batch of images")
        val = validate()
        row = {
            "epoch": epoch,
            "train_rmse": float(np.mean(losses)),
            "val_rmse": val,
            "learning_rate": _learning_rate_at(reset, learning_rate, reset_every, steps),
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
        if resume is not None:
            resume.save(
                {
                    "epoch": epoch,
                    "steps": steps,
                    "history": history,
                    "initial": initial,
                    "best": best,
                    "best_epoch": best_epoch,
                },
                {
                    **variable_arrays("alpha", alphas),
                    **{f"best/{i}": v for i, v in enumerate(best_values)},
                    **variable_arrays("adam", optimizer_state(optimizer)),
                },
            )
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


def replica_loss(float_model, qmodel, x, loss: str = "rmse"):
    """(surrogate, global RMSE) of one replica's part `x` of a global batch, in a replica
    context: the surrogates' gradients summed over the replicas are the gradient of the
    global batch's loss (RMSE: d RMSE = d(sum of squares) / (2 n RMSE); smooth L1: the
    per-image sums over the global batch's image count)."""
    context = tf.distribute.get_replica_context()
    target = tf.cast(float_model(x, training=False), tf.float32)
    d = tf.cast(qmodel(x, training=False), tf.float32) - target
    squares = tf.reduce_sum(tf.square(d))
    values = tf.cast(tf.size(d), tf.float32)
    images = tf.cast(tf.shape(d)[0], tf.float32)
    all_squares, all_values, all_images = context.all_reduce(
        tf.distribute.ReduceOp.SUM, [tf.stop_gradient(squares), values, images]
    )
    rmse = tf.sqrt(all_squares / all_values)
    if loss == "rmse":
        return squares / (2.0 * all_values * rmse), rmse
    terms = tf.reduce_sum(tf.sqrt(tf.square(d) + SMOOTH_L1_EPSILON))
    return terms / all_images, rmse


def _distributed_step(strategy, float_model, qmodel, optimizer, bounds, loss: str):
    """step(x, rate) -> the global batch's RMSE, each replica on its part of `x` (see the
    module doc)."""
    alphas = [variable for variable, _, _ in bounds]
    n = strategy.num_replicas_in_sync

    def replica_step(x):
        with tf.GradientTape() as tape:
            surrogate, rmse = replica_loss(float_model, qmodel, x, loss)
        optimizer.apply_gradients(zip(tape.gradient(surrogate, alphas), alphas))
        return rmse

    @tf.function(reduce_retracing=True)
    def run(parts):
        return strategy.run(replica_step, args=(parts,))

    @tf.function
    def clip():  # once, on the mirrored variables (cross-replica context)
        for variable, low, high in bounds:
            variable.assign(tf.clip_by_value(variable, low, high))

    def step(x, rate):
        optimizer.learning_rate.assign(rate)
        parts = np.array_split(np.asarray(x), n)
        shards = strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(parts[context.replica_id_in_sync_group])
        )
        rmse = strategy.experimental_local_results(run(shards))[0]
        clip()
        return rmse

    return step


def _log(stream, line: str) -> None:
    if stream is not None:
        print(line, file=stream, flush=True)
