"""The MicroNet score as a differentiable TensorFlow graph of the bit widths (`ScoreGraph`: the
TF twin of quantflow.quant.micronet.score), and the score of a trained model's bits."""

from __future__ import annotations

import numpy as np

from quantflow.errors import QuantflowError
from quantflow.quant.adjustable.settings import QUANT_INFO_FORMAT, _activations, _ops
from quantflow.quant.micronet.count import FULL_BITS, MAC_KINDS
from quantflow.quant.micronet.score import (
    REFERENCES,
    activation_tensors,
    reference_counts,
    score,
)


class ScoreGraph:
    """The MicroNet score of an adjustable model as a function of its bit widths: the
    records of `micronet.count_model(float_model)` (the same graph the transform
    rewrites) joined to the model's quantizers by name (a layer's path's last part; a
    tensor's quantizer is "<tensor>_quant"). A record or tensor with no adjustable
    quantizer keeps a constant width (its quantizer's bits; 8 without one)."""

    def __init__(self, model, counts, *, reference: str = "model", bias_bits: int = 32):
        self.counts = list(counts)
        self.bias_bits = int(bias_bits)
        refs = REFERENCES[reference]
        own = reference_counts(self.counts)
        self.p_ref = float(refs["p_ref"] or own["p_ref"])
        self.f_ref = float(refs["f_ref"] or own["f_ref"])
        ops = {layer.name: layer for layer in _ops(model)}
        acts = {layer.name: layer for layer in _activations(model)}
        self.weight_hosts, self.activation_hosts = {}, {}
        for c in self.counts:
            if c.weights and c.kind in MAC_KINDS:
                self.weight_hosts[c.name] = ops.get(c.name.split("/")[-1])
        self.tensors = activation_tensors(self.counts)
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
        numpy, for `score`."""
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
        """`score` at the current integer bit widths."""
        weight, act = self.bits()
        return score(
            self.counts, weight, act, bias_bits=self.bias_bits, p_ref=self.p_ref, f_ref=self.f_ref
        )

    def deployed(self) -> dict:
        """`score` of what the deployable file holds: each kernel at its storage class's
        width (`quantflow.quant.adjustable.storage`: 4 when every channel is at most 4
        bits, else 8), every activation at 8 bits (LiteRT runs int8 activations)."""
        from quantflow.quant.adjustable.storage import stored_bits

        weight, act = self.bits()
        weight = {k: np.asarray(stored_bits(v), np.float64) for k, v in weight.items()}
        act = {k: np.full_like(v, 8.0) for k, v in act.items()}
        return score(
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

        full = float(FULL_BITS)
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
            if c.kind == "float":  # a float island: constant, at 32 bits
                storage += float(c.float_parameters)
                operations += float(c.operations)
            elif c.kind in MAC_KINDS:
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
                    "layer": (
                        None
                        if self.weight_hosts.get(name) is None
                        else self.weight_hosts[name].name
                    ),
                    "bits": [int(v) for v in bits],
                }
                for name, bits in weight.items()
            },
            "activations": {
                name: {
                    "quantizer": (
                        None
                        if self.activation_hosts[name] is None
                        else self.activation_hosts[name].name
                    ),
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
    return score(
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
