"""Adjustable mixed-precision quantization (after the Texas-EIC MicroNet entry,
tilmto/Adjustable-Quantization-MicroNet): every weight channel and every activation
channel trains its own range (alpha) and precision (beta); the loss adds the MicroNet
score (`quantflow.micronet`) to the task, so bit widths fall where they cost least.

    model   = build_model(float_model, settings)        # adjustable quantizers everywhere
    calibrate(model, images, settings)                  # T per channel, alpha = beta = 1
    graph   = ScoreGraph(model, micronet.count_model(float_model))
    result  = train(float_model, model, graph, data, settings, ...)

The fake-quant graph is the FAT transform's (`quantflow.quant.fake_quant_model`) with the
"adjustable" quantizers (`quantflow.quant.adjustable`) for weights (per output channel)
and activations (per channel); bit bounds `min_bits` .. `max_bits`, initial width
`weight_bits` / `activation_bits` (8). The folded kernels and biases train too.

Loss = cls_weight * cross-entropy(labels) + kd_weight * MSE(float logits, logits)
       + metric_weight * (parameter score + operation score),
where a multiplication's max(w, a) bits pass 1 - gamma of their gradient to the weight's
bits and gamma to the activation's (the reference's soft_reduce_max_op; its value is the
true maximum). With `target_score`, as the reference's `metric`, the metric term changes
sign below the target: the bits fall while the score is above it and may rise below.

Schedule: each epoch is `mini_epochs` mini-epochs; bit widths train in the odd ones (1st,
3rd, ...) and stay fixed in the others. After each mini-epoch the held-out accuracy and
the exact score are measured and a checkpoint written; the best checkpoint is the lowest
score whose held-out top-1 is within `tolerance` percentage points of the float model's
(else the most accurate one). Fine-tuning: from the best checkpoint, bit widths fixed,
`swa_epochs` more epochs with stochastic weight averaging (the running mean of the
weights and ranges, sampled every `swa_freq` of an epoch after `swa_delay` of it); the
averaged model is kept if its held-out accuracy is at least the best checkpoint's.

Differences from the reference, deliberately: biases are not quantized below 32 bits
(TFLite stores int32 biases; the score counts them at 32 bits); the model input keeps its
fixed 8-bit range; the learning rates and lengths suit a few CPU minutes, not 3 epochs
of ImageNet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields

import numpy as np

from quantflow.errors import QuantflowError
from quantflow import micronet

QUANT_INFO_FORMAT = 1


@dataclass
class Settings:
    """One target's settings (config `adjustable: targets: <name>: ...` over the section's
    defaults)."""

    weight_bits: int = 8  # initial bit width n (beta = 1)
    activation_bits: int = 8
    min_bits: int = 2
    max_bits: int = 8
    metric_weight: float = 1.0
    target_score: float | None = None
    cls_weight: float = 1.0
    kd_weight: float = 1.0
    gamma: float = 0.7
    images: int = 20000
    validation_images: int = 1000
    batch_size: int = 50
    epochs: int = 2
    mini_epochs: int = 10
    learning_rate: float = 5e-5  # weights and ranges
    bits_learning_rate: float = 1e-2
    swa_epochs: int = 1
    swa_delay: float = 0.2
    swa_freq: float = 0.1
    swa_learning_rate: float = 5e-5
    tolerance: float = 1.0  # percentage points of held-out top-1 below the float model
    reference: str = "model"  # or micronet_imagenet
    calibration_batches: int = 10

    @classmethod
    def from_dict(cls, data: dict) -> "Settings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise QuantflowError(
                f"adjustable: unknown settings {unknown}; known: {', '.join(sorted(known))}"
            )
        settings = cls(**data)
        settings.check()
        return settings

    def check(self) -> None:
        if not 1 <= self.min_bits <= self.max_bits <= 16:
            raise QuantflowError(
                f"adjustable: need 1 <= min_bits <= max_bits <= 16, got {self.min_bits}, "
                f"{self.max_bits}"
            )
        for what in ("weight_bits", "activation_bits"):
            if not 2 <= getattr(self, what) <= 16:
                raise QuantflowError(f"adjustable: {what} must be 2..16")
        if self.reference not in micronet.REFERENCES:
            raise QuantflowError(
                f"adjustable: reference must be one of {', '.join(micronet.REFERENCES)}"
            )
        if self.epochs < 1 or self.mini_epochs < 1 or self.batch_size < 1 or self.images < 1:
            raise QuantflowError("adjustable: epochs, mini_epochs, batch_size, images >= 1")
        if not 0 < self.swa_freq <= 1 or not 0 <= self.swa_delay < 1 or self.swa_epochs < 0:
            raise QuantflowError("adjustable: need 0 < swa_freq <= 1, 0 <= swa_delay < 1")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------- the model


def quant_config(settings: Settings, overrides: dict | None = None):
    """The per-layer config: adjustable quantizers for weights and activations."""
    from quantflow.quant.config import QuantConfig

    return QuantConfig(
        {
            "weight_bits": settings.weight_bits,
            "activation_bits": settings.activation_bits,
            "per_channel": True,
            "symmetric": True,
            "weight_quantizer": "adjustable",
            "activation_quantizer": "adjustable",
            "min_bits": settings.min_bits,
            "max_bits": settings.max_bits,
        },
        overrides,
    )


def build_model(float_model, settings: Settings, overrides: dict | None = None):
    """The adjustable fake-quant twin of `float_model` (calibrate it before use; `train`
    trains its folded kernels and biases too)."""
    from quantflow.quant.transform import fake_quant_model

    return fake_quant_model(float_model, config=quant_config(settings, overrides))


def _ops(model):
    from quantflow.quant.calibrate import weight_quantizers

    return weight_quantizers(model)


def _activations(model):
    from quantflow.quant.calibrate import activation_quantizers

    return activation_quantizers(model)


def calibrate(model, images, settings: Settings, batch_size: int = 50) -> dict:
    """Per-channel activation ranges (max) and weight ranges; alpha = beta = 1."""
    from quantflow.quant.calibrate import calibrate as _calibrate

    return _calibrate(model, images, settings.calibration_batches, batch_size=batch_size)


def init_from_fat(model, fat_trained: dict) -> dict:
    """Start from FAT's trained thresholds of an 8-bit per-channel symmetric scheme
    (`quantflow.fat.load_thresholds(...)["trained"]`): weight channels take FAT's alpha
    (same T_max, the same folded kernel); an activation channel whose calibrated range
    exceeds FAT's trained per-tensor threshold T is clipped to T (alpha = T / T_c, at
    least 0.5). Returns {"weights": n, "activations": n} of quantizers initialised."""
    done = {"weights": 0, "activations": 0}
    for layer in _ops(model):
        row = fat_trained.get(f"{layer.name}/kernel")
        if row is None or "alpha" not in row:
            continue
        alpha = np.asarray(row["alpha"], np.float32)
        q = layer.quantizer
        if alpha.size not in (1, q.channels):
            continue
        q.alpha.assign(np.broadcast_to(alpha, (q.channels,)).astype(np.float32))
        done["weights"] += 1
    for act in _activations(model):
        row = fat_trained.get(act.name)
        q = act.quantizer
        if row is None or q.fixed_range is not None or "alpha" not in row:
            continue
        t_fat = float(row["alpha"]) * float(row["t_max"])
        t_c = np.asarray(q.t_max.numpy(), np.float64)
        alpha = np.clip(t_fat / np.maximum(t_c, 1e-12), q.alpha_range[0], 1.0)
        q.alpha.assign(alpha.astype(np.float32))
        done["activations"] += 1
    return done


# --------------------------------------------------------------------------- the score


class ScoreGraph:
    """The MicroNet score of an adjustable model as a function of its bit widths: the
    records of `micronet.count_model(float_model)` (the same graph the transform
    rewrites) joined to the model's quantizers by name (a layer's path's last part; a
    tensor's quantizer is "<tensor>_quant"). A record or tensor with no adjustable
    quantizer keeps a constant width (its quantizer's bits; 8 without one)."""

    def __init__(self, model, counts, *, reference: str = "model", bias_bits: int = 32):
        self.counts = list(counts)
        self.bias_bits = int(bias_bits)
        refs = micronet.REFERENCES[reference]
        own = micronet.reference_counts(self.counts)
        self.p_ref = float(refs["p_ref"] or own["p_ref"])
        self.f_ref = float(refs["f_ref"] or own["f_ref"])
        ops = {layer.name: layer for layer in _ops(model)}
        acts = {layer.name: layer for layer in _activations(model)}
        self.weight_hosts, self.activation_hosts = {}, {}
        for c in self.counts:
            if c.weights and c.kind in micronet.MAC_KINDS:
                self.weight_hosts[c.name] = ops.get(c.name.split("/")[-1])
        self.tensors = micronet.activation_tensors(self.counts)
        for name in self.tensors:
            self.activation_hosts[name] = acts.get(f"{name.split('/')[-1]}_quant")
        self.unmatched = sorted(
            [n for n, h in self.weight_hosts.items() if h is None]
            + [n for n, h in self.activation_hosts.items() if h is None]
        )

    # ---- bits
    def _constant(self, host, channels: int) -> np.ndarray:
        bits = 8 if host is None else host.quantizer.bits
        return np.full(channels, float(bits))

    def bits(self) -> tuple[dict, dict]:
        """(weight bits {record: per-channel array}, activation bits {tensor: array}),
        numpy, for `micronet.score`."""
        weight, act = {}, {}
        for c in self.counts:
            if not c.weights:
                continue
            host = self.weight_hosts.get(c.name)
            if host is not None and hasattr(host.quantizer, "channel_bits"):
                w = host.quantizer.channel_bits().astype(np.float64)
                weight[c.name] = np.broadcast_to(w, (c.weight_channels,)).copy()
            else:
                weight[c.name] = np.full(c.weight_channels, 8.0)
        for name, channels in self.tensors.items():
            host = self.activation_hosts[name]
            if host is not None and hasattr(host.quantizer, "channel_bits"):
                a = host.quantizer.channel_bits().astype(np.float64)
                act[name] = np.broadcast_to(a, (channels,)).copy()
            else:
                act[name] = self._constant(host, channels)
        return weight, act

    def exact(self) -> dict:
        """`micronet.score` at the current integer bit widths."""
        weight, act = self.bits()
        return micronet.score(
            self.counts, weight, act, bias_bits=self.bias_bits, p_ref=self.p_ref, f_ref=self.f_ref
        )

    # ---- differentiable
    def _tf_bits(self, tf, host, channels: int):
        if host is not None and hasattr(host.quantizer, "bits_tensor"):
            b = tf.reshape(host.quantizer.bits_tensor(), [-1])
            return tf.broadcast_to(b, [channels]) if b.shape[0] == 1 else b
        return tf.constant(self._constant(host, channels), tf.float32)

    def terms(self, gamma: float = 0.5):
        """(parameter score, operation score) as float32 tensors, differentiable in the
        betas through the straight-through rounding of the bit widths. A multiplication's
        max(w, a) passes 1 - gamma of its gradient to the weight's bits and gamma to the
        activation's (the reference's soft_reduce_max_op, gamma 0.7); other operations'
        maxima split theirs equally."""
        import tensorflow as tf

        full = float(micronet.FULL_BITS)
        act = {n: self._tf_bits(tf, h, self.tensors[n]) for n, h in self.activation_hosts.items()}
        storage, operations = tf.constant(0.0), tf.constant(0.0)
        for c in self.counts:
            w = None
            if c.weights:
                w = self._tf_bits(tf, self.weight_hosts.get(c.name), c.weight_channels)
                storage += tf.reduce_sum(w) * (c.weights_per_channel / full)
            if c.bias:
                storage += c.bias * self.bias_bits / full
            views = [_tf_view(tf, act[t["tensor"]], int(t["view_channels"])) for t in c.inputs]
            if c.kind in micronet.MAC_KINDS:
                a = views[0]
                wg = tf.reshape(w, [c.groups, -1])
                ag = tf.reshape(a, [c.groups, -1])
                pairs = tf.reduce_sum(_split_max(wg[:, :, None], ag[:, None, :], gamma))
                operations += 2.0 * c.pair_macs * pairs / full
            elif c.operations:
                bits = tf.zeros([c.output_channels])
                for v in views + ([w] if w is not None else []):
                    bits = _split_max(bits, tf.broadcast_to(v, [c.output_channels]), 0.5)
                operations += (c.operations / c.output_channels) * tf.reduce_sum(bits) / full
        return storage / self.p_ref, operations / self.f_ref

    def quant_info(self) -> dict:
        """The bit width of every channel of every weight and activation tensor the score
        counts, with what the score needs besides the counts (`score_from_quant_info`)."""
        weight, act = self.bits()
        return {
            "format": QUANT_INFO_FORMAT,
            "bias_bits": self.bias_bits,
            "p_ref": self.p_ref,
            "f_ref": self.f_ref,
            "weights": {
                name: {
                    "layer": None if self.weight_hosts.get(name) is None
                    else self.weight_hosts[name].name,
                    "bits": [int(v) for v in bits],
                }
                for name, bits in weight.items()
            },
            "activations": {
                name: {
                    "quantizer": None if self.activation_hosts[name] is None
                    else self.activation_hosts[name].name,
                    "bits": [int(v) for v in bits],
                }
                for name, bits in act.items()
            },
            "unmatched": self.unmatched,
        }


def _split_max(a, b, share_b: float):
    """max(a, b) whose gradient goes (1 - share_b) to a and share_b to b."""
    import tensorflow as tf

    mixed = (1.0 - share_b) * a + share_b * b
    return mixed + tf.stop_gradient(tf.maximum(a, b) - mixed)


def _tf_view(tf, bits, view_channels: int):
    """micronet._view in TensorFlow: view channel l reads channel l % C."""
    c = int(bits.shape[0])
    if view_channels == c:
        return bits
    if view_channels % c == 0:
        return tf.tile(bits, [view_channels // c])
    return tf.fill([view_channels], tf.reduce_max(bits))


def score_from_quant_info(info: dict, counts) -> dict:
    """The MicroNet score of a quant_info.json with its model_info.json counts: the bits
    alone reproduce the score the training recorded."""
    if not isinstance(info, dict) or info.get("format") != QUANT_INFO_FORMAT:
        raise QuantflowError(f"not a quant_info record (format {QUANT_INFO_FORMAT})")
    weight = {k: np.asarray(v["bits"], np.float64) for k, v in info["weights"].items()}
    act = {k: np.asarray(v["bits"], np.float64) for k, v in info["activations"].items()}
    return micronet.score(
        counts, weight, act, bias_bits=info["bias_bits"], p_ref=info["p_ref"], f_ref=info["f_ref"]
    )


def bit_summary(info: dict) -> dict:
    """Mean weight and activation bits (unweighted over channels) and their histograms."""
    out = {}
    for kind in ("weights", "activations"):
        bits = np.concatenate([np.asarray(v["bits"]) for v in info[kind].values()] or [[0]])
        values, counts = np.unique(bits, return_counts=True)
        out[kind] = {
            "channels": int(bits.size),
            "mean_channel_bits": float(bits.mean()),
            "histogram": {int(v): int(n) for v, n in zip(values, counts)},
        }
    return out


# --------------------------------------------------------------------------- training


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
    return np.concatenate(
        [np.asarray(model(images[i : i + batch_size], training=False))
         for i in range(0, len(images), batch_size)]
    )


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
) -> dict:
    """Train `model` (built and calibrated) on data["images"], data["labels"] (training
    images, float32 pixels), selecting on data["val_images"], data["val_labels"]; see the
    module doc. `on_checkpoint(state, best)` is called after every mini-epoch with the
    state row (the model holds its weights then) and whether it is the new best.
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
        total = (settings.cls_weight * cls + settings.kd_weight * kd
                 + settings.metric_weight * metric)
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
                opt_b.apply_gradients(zip(grads[len(weights):], betas))
            return total, cls, kd, score

        return step

    steps_fn = {True: make_step(True, opt_w), False: make_step(False, opt_w)}

    def run_steps(step, order, first: int, stop: int):
        """Steps first..stop-1 of an epoch in `order`; yields each step's loss terms."""
        for s in range(first, stop):
            idx = np.sort(order[s * batch : (s + 1) * batch])
            values = step(tf.constant(images[idx]), tf.constant(labels[idx]),
                          tf.constant(targets[idx]))
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
        if ok:
            return (row["score"], -row["val_accuracy"]) < (best["score"], -best["val_accuracy"])
        return row["val_accuracy"] > best["val_accuracy"]

    def finish_row(row):
        row["within_tolerance"] = bool(
            row["val_accuracy"] >= float_acc - settings.tolerance / 100.0 - 1e-12
        )
        return row

    history = []
    row = finish_row(evaluate_state(0, False, {}))
    history.append(row)
    best = dict(row)
    best_values = [np.array(v.numpy()) for v in weights + betas]
    if on_checkpoint is not None:
        on_checkpoint(row, True)
    log(f"float held-out top-1 {100 * float_acc:.2f}%; initial: top-1 "
        f"{100 * row['val_accuracy']:.2f}%, score {row['score']:.4f}, mean bits w "
        f"{row['mean_weight_bits']:.2f} a {row['mean_activation_bits']:.2f}")
    start, step_count, mini = time.perf_counter(), 0, 0
    for epoch in range(settings.epochs):
        order = rng.permutation(len(images))
        for m in range(settings.mini_epochs):
            mini += 1
            train_bits = mini % 2 == 1
            sums = {"loss": 0.0, "cls": 0.0, "kd": 0.0, "score": 0.0}
            for values in run_steps(steps_fn[train_bits], order, bounds[m], bounds[m + 1]):
                for k, v in zip(sums, values):
                    sums[k] += float(v)
            n = max(int(bounds[m + 1] - bounds[m]), 1)
            step_count += int(bounds[m + 1] - bounds[m])
            means = {k: v / n for k, v in sums.items()}
            row = finish_row(evaluate_state(mini, train_bits, means))
            row["epoch"] = epoch + 1
            history.append(row)
            improved = better(row, best)
            if improved:
                best = dict(row)
                best_values = [np.array(v.numpy()) for v in weights + betas]
            if on_checkpoint is not None:
                on_checkpoint(row, improved)
            log(f"mini-epoch {mini} ({'bits' if train_bits else 'fixed bits'}): loss "
                f"{means['loss']:.4f} (CE {means['cls']:.4f}, KD {means['kd']:.4f}, score "
                f"{means['score']:.4f}); held-out top-1 {100 * row['val_accuracy']:.2f}%, "
                f"score {row['score']:.4f}, mean bits w {row['mean_weight_bits']:.2f} a "
                f"{row['mean_activation_bits']:.2f}{' (best)' if improved else ''}")
    search_seconds = time.perf_counter() - start
    for v, value in zip(weights + betas, best_values):
        v.assign(value)

    # fine-tuning with SWA, bit widths fixed
    swa = {"epochs": settings.swa_epochs, "used": False, "before": best["val_accuracy"]}
    start = time.perf_counter()
    if settings.swa_epochs > 0:
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
        log(f"SWA fine-tuning ({settings.swa_epochs} epoch(s), {averager.count} samples): "
            f"held-out top-1 {100 * best['val_accuracy']:.2f}% -> {100 * after:.2f}% "
            f"({'kept' if swa['used'] else 'discarded'})")
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


# --------------------------------------------------------------------------- outputs


def packed_weights(model, meta: dict | None = None):
    """The deployable weights: every kernel's integer codes at its channels' own bit
    widths (`quantflow.bitpack`), biases as float32 arrays."""
    from quantflow import bitpack

    tensors, arrays = {}, {}
    ops = {layer.name: layer for layer in _ops(model)}
    for name, (kernel, step, bits) in quantized_kernels(model).items():
        depthwise = type(ops[name]).__name__ == "QDepthwiseConv2D"
        axis = bitpack.KERAS_CHANNEL_AXIS["depthwise" if depthwise else "conv"]
        # the output channels are the last axis (depthwise: the last two, C order)
        codes = np.rint(kernel.reshape(-1, step.size) / step).astype(np.int32)
        codes = codes.reshape(kernel.shape)
        tensors[f"{name}/kernel"] = {
            "codes": codes, "bits": bits, "scales": step, "channel_axis": axis,
        }
        arrays[f"{name}/bias"] = np.asarray(ops[name].bias.numpy(), np.float32)
    return bitpack.pack_file(tensors, arrays, meta or {})


def quantized_kernels(model) -> dict:
    """{layer name: (quantized kernel, per-channel step, per-channel bits)} of every
    adjustable weight quantizer."""
    import tensorflow as tf

    out = {}
    for layer in _ops(model):
        q = layer.quantizer
        kernel = tf.convert_to_tensor(layer.kernel)
        view = layer._channel_view(kernel)
        quantized = np.asarray(q(view), np.float32).reshape(tuple(kernel.shape))
        channels = int(view.shape[-1])
        step = np.broadcast_to(np.asarray(q.scale(), np.float32).reshape(-1), (channels,))
        bits = np.broadcast_to(q.channel_bits().reshape(-1), (channels,))
        out[layer.name] = (quantized, step.copy(), bits.copy())
    return out


def int8_model(float_model, model, images=None):
    """The deployable configuration as a FAT-style int8 fake-quant model (which converts
    to an int8 TFLite model and which LiteRT runs exactly): each kernel channel on an int8
    grid that contains its b-bit grid (step S / floor(127 / (2^(b-1) - 1)), so the int8
    codes are the b-bit codes times that factor: at most 2^b - 1 distinct values), the
    same float biases, and every activation 8-bit per tensor over the largest trained
    range of its channels. Returns the model (its thresholds set; no calibration needed)."""
    from quantflow.quant.transform import fake_quant_model

    qmodel = fake_quant_model(float_model, weight_bits=8, activation_bits=8,
                              per_channel=True, symmetric=True)
    kernels = quantized_kernels(model)
    ops8 = {layer.name: layer for layer in _ops(qmodel)}
    if set(ops8) != set(kernels):
        raise QuantflowError("the int8 model's layers differ from the adjustable model's")
    adj_ops = {layer.name: layer for layer in _ops(model)}
    for name, (kernel, step, bits) in kernels.items():
        layer = ops8[name]
        levels = 2.0 ** (bits.astype(np.float64) - 1) - 1
        factor = np.floor(127.0 / np.maximum(levels, 1.0))
        int8_step = step.astype(np.float64) / factor
        layer.kernel.assign(kernel)
        layer.bias.assign(np.asarray(adj_ops[name].bias.numpy()))
        t_max = np.maximum(127.0 * int8_step, 1e-12).astype(np.float32)
        layer.quantizer.t_max.assign(t_max.reshape(layer.quantizer.t_max.shape))
        layer.quantizer.alpha.assign(np.ones_like(t_max).reshape(layer.quantizer.alpha.shape))
    adj_acts = {a.name: a for a in _activations(model)}
    for act in _activations(qmodel):
        src = adj_acts.get(act.name)
        if act.fixed_range is not None:
            continue
        if src is None or src.fixed_range is not None:
            raise QuantflowError(f"activation quantizer {act.name!r}: no adjustable twin")
        t = float(np.max(np.asarray(src.quantizer.threshold())))
        act.set_statistics(0.0, t)
    return qmodel
