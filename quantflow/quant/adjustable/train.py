"""The adjustable search: training ranges and bit widths under the MicroNet score, in
mini-epochs, then SWA fine-tuning (see quantflow.quant.adjustable).

Under a tf.distribute strategy with several replicas (quantflow.distribute), each global
batch is split among the replicas and each step's gradient is the global batch's: a
replica's cross-entropy and distillation sums are divided by the global image and value
counts (all-reduced), the score term (one per model, not per image) by the replica count,
and Keras' optimizers sum the replicas' gradients. Clipping, the int4 snapping, SWA's
averages and the checkpoint choice run once, in the cross-replica context, on the
mirrored variables. With one replica the step is the single-device one, unchanged."""

from __future__ import annotations

import time

import numpy as np

from quantflow.distribute.resume import optimizer_state, restore_variables, variable_arrays
from quantflow.distribute.strategy import replicas, scope
from quantflow.errors import QuantflowError
from quantflow.quant.adjustable.score import ScoreGraph, bit_summary
from quantflow.quant.adjustable.settings import Settings, _activations, _ops
from quantflow.quant.adjustable.storage import snap_to_int4


def _variables(model):
    """(weights and ranges, betas): the trainable variables by learning rate."""
    weights, betas = [], []
    for layer in _ops(model):
        weights += [layer.kernel, layer.bias]
    hosts = [layer.quantizer for layer in _ops(model)] + [a.quantizer for a in _activations(model)]
    for q in hosts:
        if hasattr(q, "beta") and getattr(q, "fixed_range", None) is None:
            weights.append(q.alpha)
            betas.append(q.beta)
    return weights, betas


def accuracy(model, images, labels, batch_size: int = 250) -> float:
    """Top-1 of `model` on `images` (ties count 1/k, as quantflow.metrics does)."""
    from quantflow.metrics import top_k_accuracy

    return top_k_accuracy(labels, predict(model, images, batch_size), 1)


def predict(model, images, batch_size: int = 250) -> np.ndarray:
    """`model`'s outputs on `images` (inference mode), batch by batch, as one array."""
    return np.concatenate(
        [
            np.asarray(model(images[i : i + batch_size], training=False))
            for i in range(0, len(images), batch_size)
        ]
    )


def _distributed_maker(strategy, model, graph, settings, weights, betas, opt_b):
    """make_step(train_bits, optimizer_w) for several replicas (see the module doc): the
    returned step(x, y, t) takes the global batch and returns its (total, cross-entropy,
    distillation MSE, score)."""
    import keras
    import tensorflow as tf

    n = strategy.num_replicas_in_sync
    gamma, target = float(settings.gamma), settings.target_score
    total_op = tf.distribute.ReduceOp.SUM

    def make_step(train_bits: bool, optimizer_w):
        variables = weights + (betas if train_bits else [])

        def replica(x, y, t):
            context = tf.distribute.get_replica_context()
            sources = [v.value for v in variables]
            with tf.GradientTape() as tape:
                tape.watch(sources)
                logits = model(x, training=True)
                ce = tf.reduce_sum(
                    keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
                )
                squares = tf.reduce_sum(tf.square(logits - t))
                counts = [
                    tf.cast(tf.shape(logits)[0], tf.float32),
                    tf.cast(tf.size(logits), tf.float32),
                ]
                images, values = context.all_reduce(total_op, counts)
                p, f = graph.terms(gamma)
                metric = p + f
                if target is not None:
                    metric = tf.where(metric > target, metric, -metric)
                surrogate = (
                    settings.cls_weight * ce / images
                    + settings.kd_weight * squares / values
                    + settings.metric_weight * metric / n
                )
            grads = tape.gradient(surrogate, sources)
            grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
            optimizer_w.apply_gradients(zip(grads[: len(weights)], weights))
            if train_bits:
                opt_b.apply_gradients(zip(grads[len(weights) :], betas))
            ce, squares = context.all_reduce(total_op, [ce, squares])
            cls, kd = ce / images, squares / values
            total = (
                settings.cls_weight * cls
                + settings.kd_weight * kd
                + settings.metric_weight * metric
            )
            return total, cls, kd, p + f

        @tf.function(reduce_retracing=True)
        def run(x, y, t):
            return strategy.run(replica, args=(x, y, t))

        def step(x, y, t):
            parts = [np.array_split(np.asarray(v), n) for v in (x, y, t)]
            shards = [
                strategy.experimental_distribute_values_from_function(
                    lambda context, p=p: tf.constant(p[context.replica_id_in_sync_group])
                )
                for p in parts
            ]
            return [strategy.experimental_local_results(v)[0] for v in run(*shards)]

        return step

    return make_step


class _Averager:
    """Stochastic weight averaging of a list of variables."""

    def __init__(self, variables):
        self.variables = variables
        self.sums = None
        self.count = 0

    def add(self) -> None:
        values = [np.array(v.numpy(), np.float64) for v in self.variables]
        self.sums = values if self.sums is None else [s + v for s, v in zip(self.sums, values)]
        self.count += 1

    def assign(self) -> None:
        for v, s in zip(self.variables, self.sums):
            v.assign((s / self.count).astype(np.float32))


def train(
    float_model,
    model,
    graph: ScoreGraph,
    data: dict,
    settings: Settings,
    *,
    seed: int = 0,
    on_checkpoint=None,
    log=print,
    strategy=None,
    resume=None,
) -> dict:
    """Train `model` (built and calibrated) on data["images"], data["labels"] (training
    images, float32 pixels), selecting on data["val_images"], data["val_labels"]; see the
    module doc. `on_checkpoint(state, best)` is called after every mini-epoch with the
    state row (the model holds its weights then) and whether it is the new best.
    `resume` (a quantflow.distribute.resume.ResumeState, or None): after every mini-epoch
    the search's state (every model variable, both optimizers, the kept values, the data
    order and random state, the int4 class) is saved there, and a run that finds a state
    goes on after its mini-epoch, as the killed run would have (SWA, after the search,
    starts over).
    Returns {"history": [...], "best": state, "float_accuracy", "swa": {...}, "steps"}."""
    import keras
    import tensorflow as tf

    from quantflow.quant.calibrate import clip_alphas

    images, labels = data["images"], data["labels"].astype(np.int32)
    val_images, val_labels = data["val_images"], data["val_labels"].astype(np.int32)
    batch = settings.batch_size
    targets = predict(float_model, images).astype(np.float32)
    float_acc = accuracy(float_model, val_images, val_labels)
    weights, betas = _variables(model)
    if not betas:
        raise QuantflowError("the model has no adjustable quantizers: build it with build_model")
    with scope(strategy):
        opt_w = keras.optimizers.Adam(settings.learning_rate)
        opt_b = keras.optimizers.Adam(settings.bits_learning_rate)
        opt_w.build(weights)
        opt_b.build(betas)
    gamma = float(settings.gamma)
    target = settings.target_score
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def losses(x, y, t):
        logits = model(x, training=True)
        cls = ce(y, logits)
        kd = tf.reduce_mean(tf.square(logits - t))
        p, f = graph.terms(gamma)
        metric = p + f
        if target is not None:  # the reference's sign: above the target lower the bits
            metric = tf.where(metric > target, metric, -metric)
        total = (
            settings.cls_weight * cls + settings.kd_weight * kd + settings.metric_weight * metric
        )
        return total, cls, kd, p + f

    def make_step(train_bits: bool, optimizer_w):
        variables = weights + (betas if train_bits else [])
        # the tf.Variables (kernels and biases are not trainable Keras variables)
        sources = [v.value for v in variables]

        @tf.function(reduce_retracing=True)
        def step(x, y, t):
            with tf.GradientTape() as tape:
                tape.watch(sources)
                total, cls, kd, score = losses(x, y, t)
            grads = tape.gradient(total, sources)
            grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
            optimizer_w.apply_gradients(zip(grads[: len(weights)], weights))
            if train_bits:
                opt_b.apply_gradients(zip(grads[len(weights) :], betas))
            return total, cls, kd, score

        return step

    if replicas(strategy) > 1:
        make_step = _distributed_maker(  # noqa: F811 (the same steps, over the replicas)
            strategy, model, graph, settings, weights, betas, opt_b
        )
    steps_fn = {True: make_step(True, opt_w), False: make_step(False, opt_w)}

    def run_steps(step, order, first: int, stop: int):
        """Steps first..stop-1 of an epoch in `order`; yields each step's loss terms."""
        for s in range(first, stop):
            idx = np.sort(order[s * batch : (s + 1) * batch])
            values = step(
                tf.constant(images[idx]), tf.constant(labels[idx]), tf.constant(targets[idx])
            )
            clip_alphas(model)
            yield values

    rng = np.random.default_rng(seed)
    steps_per_epoch = max(1, len(images) // batch)
    bounds = np.linspace(0, steps_per_epoch, settings.mini_epochs + 1).round().astype(int)

    def evaluate_state(mini_epoch: int, train_bits, row_losses) -> dict:
        acc = accuracy(model, val_images, val_labels)
        exact = graph.exact()
        info = graph.quant_info()
        summary = bit_summary(info)
        row = {
            "mini_epoch": mini_epoch,
            "bits_trained": train_bits,
            "loss": row_losses.get("loss"),
            "cross_entropy": row_losses.get("cls"),
            "distillation_mse": row_losses.get("kd"),
            "score_term": row_losses.get("score"),
            "val_accuracy": acc,
            "score": exact["score"],
            "deployed_score": graph.deployed()["score"],
            "parameter_score": exact["parameter_score"],
            "operation_score": exact["operation_score"],
            "mean_weight_bits": exact["mean_weight_bits"],
            "mean_activation_bits": exact["mean_activation_bits"],
            "mean_weight_channel_bits": summary["weights"]["mean_channel_bits"],
            "mean_activation_channel_bits": summary["activations"]["mean_channel_bits"],
        }
        return row

    def better(row, best) -> bool:
        ok = row["val_accuracy"] >= float_acc - settings.tolerance / 100.0 - 1e-12
        best_ok = best["within_tolerance"]
        if ok != best_ok:
            return ok
        if ok:  # the deployment-aware search picks by what the file holds
            key = "deployed_score" if settings.storage == "int4-int8" else "score"
            return (row[key], row["score"], -row["val_accuracy"]) < (
                best[key],
                best["score"],
                -best["val_accuracy"],
            )
        return row["val_accuracy"] > best["val_accuracy"]

    def finish_row(row):
        row["within_tolerance"] = bool(
            row["val_accuracy"] >= float_acc - settings.tolerance / 100.0 - 1e-12
        )
        return row

    quantizers = [layer.quantizer for layer in _ops(model)]
    saved = resume.load() if resume is not None else None
    start, step_count, done, order = time.perf_counter(), 0, 0, None
    if saved is None:
        history = []
        row = finish_row(evaluate_state(0, False, {}))
        history.append(row)
        best = dict(row)
        best_values = [np.array(v.numpy()) for v in weights + betas]
        if on_checkpoint is not None:
            on_checkpoint(row, True)
        log(
            f"float held-out top-1 {100 * float_acc:.2f}%; initial: top-1 "
            f"{100 * row['val_accuracy']:.2f}%, score {row['score']:.4f}, mean bits w "
            f"{row['mean_weight_bits']:.2f} a {row['mean_activation_bits']:.2f}"
        )
    else:
        meta, arrays = saved
        done, step_count, history, best = (
            meta[k] for k in ("mini_epoch", "steps", "history", "best")
        )
        rng.bit_generator.state = meta["rng"]
        order = arrays["order"]
        for q, (low, high) in zip(quantizers, meta["bit_range"]):
            q.min_bits, q.max_bits = low, high
        best_values = [arrays[f"best/{i}"] for i in range(len(weights + betas))]
        for v, value in zip(weights + betas, best_values):  # the kept state's checkpoint,
            v.assign(value)  # written again (a rerun starts with no outputs)
        if on_checkpoint is not None:
            on_checkpoint(best, True)
        restore_variables("model", model.variables, arrays)
        restore_variables("weights_adam", optimizer_state(opt_w), arrays)
        restore_variables("bits_adam", optimizer_state(opt_b), arrays)
        log(f"resumed after mini-epoch {done} (step {step_count}) from {resume.path}")
    for epoch in range(settings.epochs):
        first = epoch * settings.mini_epochs  # mini-epochs before this epoch
        if first + settings.mini_epochs <= done:
            continue  # trained before the resume
        if first >= done:  # a new epoch (resumed mid-epoch: its order as saved)
            order = rng.permutation(len(images))
        for m in range(settings.mini_epochs):
            mini = first + m + 1
            if mini <= done:
                continue
            train_bits = mini % 2 == 1
            sums = {"loss": 0.0, "cls": 0.0, "kd": 0.0, "score": 0.0}
            for values in run_steps(steps_fn[train_bits], order, bounds[m], bounds[m + 1]):
                for k, v in zip(sums, values):
                    sums[k] += float(v)
            moved = []
            if train_bits and settings.storage == "int4-int8":
                moved = snap_to_int4(model, settings.int4_share)
                if moved:
                    log(f"int4 storage class from now on: {', '.join(moved)}")
            n = max(int(bounds[m + 1] - bounds[m]), 1)
            step_count += int(bounds[m + 1] - bounds[m])
            means = {k: v / n for k, v in sums.items()}
            row = finish_row(evaluate_state(mini, train_bits, means))
            row["epoch"] = epoch + 1
            row["moved_to_int4"] = moved
            history.append(row)
            improved = better(row, best)
            if improved:
                best = dict(row)
                best_values = [np.array(v.numpy()) for v in weights + betas]
            if on_checkpoint is not None:
                on_checkpoint(row, improved)
            if resume is not None:
                resume.save(
                    {
                        "mini_epoch": mini,
                        "steps": step_count,
                        "history": history,
                        "best": best,
                        "rng": rng.bit_generator.state,
                        "bit_range": [[q.min_bits, q.max_bits] for q in quantizers],
                    },
                    {
                        "order": order,
                        **variable_arrays("model", model.variables),
                        **variable_arrays("weights_adam", optimizer_state(opt_w)),
                        **variable_arrays("bits_adam", optimizer_state(opt_b)),
                        **{f"best/{i}": v for i, v in enumerate(best_values)},
                    },
                )
            log(
                f"mini-epoch {mini} ({'bits' if train_bits else 'fixed bits'}): loss "
                f"{means['loss']:.4f} (CE {means['cls']:.4f}, KD {means['kd']:.4f}, score "
                f"{means['score']:.4f}); held-out top-1 {100 * row['val_accuracy']:.2f}%, "
                f"score {row['score']:.4f}, mean bits w {row['mean_weight_bits']:.2f} a "
                f"{row['mean_activation_bits']:.2f}{' (best)' if improved else ''}"
            )
    search_seconds = time.perf_counter() - start
    for v, value in zip(weights + betas, best_values):
        v.assign(value)
    clip_alphas(model)  # a checkpoint from before a layer joined the int4 class: bits to 4

    # fine-tuning with SWA, bit widths fixed
    swa = {"epochs": settings.swa_epochs, "used": False, "before": best["val_accuracy"]}
    start = time.perf_counter()
    if settings.swa_epochs > 0:
        with scope(strategy):
            opt_s = keras.optimizers.Adam(settings.swa_learning_rate)
            opt_s.build(weights)
        fine = make_step(False, opt_s)
        averager = _Averager(weights)
        every = max(1, int(round(settings.swa_freq * steps_per_epoch)))
        delay = int(round(settings.swa_delay * steps_per_epoch))
        count = 0
        for _ in range(settings.swa_epochs):
            for _ in run_steps(fine, rng.permutation(len(images)), 0, steps_per_epoch):
                count += 1
                step_count += 1
                if count >= delay and (count - delay) % every == 0:
                    averager.add()
        if averager.count == 0:
            averager.add()
        averager.assign()
        after = accuracy(model, val_images, val_labels)
        swa.update(after=after, samples=averager.count, every_steps=every, delay_steps=delay)
        if after >= best["val_accuracy"]:
            swa["used"] = True
        else:
            for v, value in zip(weights, best_values[: len(weights)]):
                v.assign(value)
        log(
            f"SWA fine-tuning ({settings.swa_epochs} epoch(s), {averager.count} samples): "
            f"held-out top-1 {100 * best['val_accuracy']:.2f}% -> {100 * after:.2f}% "
            f"({'kept' if swa['used'] else 'discarded'})"
        )
    swa["seconds"] = time.perf_counter() - start
    final = graph.exact()
    return {
        "history": history,
        "best": best,
        "float_accuracy": float_acc,
        "final_accuracy": swa["after"] if swa["used"] else best["val_accuracy"],
        "final_score": final["score"],
        "swa": swa,
        "steps": step_count,
        "search_seconds": search_seconds,
    }
