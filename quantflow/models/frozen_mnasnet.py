"""The FAT reference's route for MNasNet: a frozen MNasNet graph's weights, extracted into
the built-in MNasNet-A1 (quantflow.models.mnasnet).

The reference (agoncharenko1992/FAT-fast-adjustable-threshold) starts from a hosted
MNasNet frozen graph and takes its weights out of it: "the information about the model's
weights is enough to restore the model itself". Here the graph's constants are read in
graph order (a topological order of the GraphDef, ties in file order):

    Conv2D / DepthwiseConv2dNative   filter (HWIO; depthwise H W C M), and the constant of a
                                     BiasAdd right after it, if any
    FusedBatchNorm(V2, V3)           scale, offset, mean, variance (and its epsilon)
    MatMul                           weights (and the bias after it): the classifier

and matched one by one, in order and by shape, against the weighted layers of MNasNet-A1
built at the requested depth multiplier: a graph of another width or layout stops at the
first op that does not fit, naming it and the layer it should have been. The model then
holds the graph's weights; `quantflow.formats.weights.extract_weights` turns it into the
project's plain weights.pickle, from which `rebuild_model` gives the same network again.

    model = mnasnet_from_frozen_graph("mnasnet.pb", 1.0, (224, 224, 3))
    save_weights(extract_weights(model), "weights.pickle")

The graph is read as data (GraphDef protobuf and its constants); nothing in it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quantflow.errors import QuantflowError

CONV_OPS = {"Conv2D": "conv", "DepthwiseConv2dNative": "depthwise", "MatMul": "dense"}
BN_OPS = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
PASS_THROUGH = ("Identity", "ReadVariableOp")


@dataclass
class GraphWeights:
    """One weighted op of the graph: its node, kind (conv, depthwise, dense, bn), arrays by
    Keras role and, for BatchNorm, its epsilon."""

    node: str
    kind: str
    arrays: dict = field(default_factory=dict)
    epsilon: float | None = None


def read_graph(path):
    """The GraphDef in a frozen graph file."""
    import tensorflow as tf

    graph = tf.compat.v1.GraphDef()
    try:
        graph.ParseFromString(Path(path).read_bytes())
    except FileNotFoundError:
        raise QuantflowError(f"frozen graph {path} not found") from None
    except Exception as e:  # protobuf's DecodeError and friends
        raise QuantflowError(f"{path}: not a frozen TensorFlow graph (GraphDef): {e}") from e
    return graph


def graph_weights(path) -> list[GraphWeights]:
    """The weighted ops of a frozen graph with their constants, in graph order."""
    import tensorflow as tf

    graph = read_graph(path)
    nodes = {n.name: n for n in graph.node}

    def source(name: str) -> str:
        return name.split(":")[0].lstrip("^")

    consumers: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            if not i.startswith("^"):
                consumers.setdefault(source(i), []).append(n.name)

    def constant(name: str, where: str) -> np.ndarray:
        node = nodes.get(source(name))
        while node is not None and node.op in PASS_THROUGH:
            node = nodes.get(source(node.input[0]))
        if node is None or node.op != "Const":
            raise QuantflowError(
                f"{path}: {where} reads {name!r}, which is not a constant: only a frozen "
                "graph (variables converted to constants) holds its weights"
            )
        return tf.make_ndarray(node.attr["value"].tensor)

    found = []
    for n in _topological(graph, source):
        if n.op in CONV_OPS:
            arrays = {"kernel": constant(n.input[1], f"{n.op} {n.name!r}")}
            after = consumers.get(n.name, [])
            if len(after) == 1 and nodes[after[0]].op == "BiasAdd":
                arrays["bias"] = constant(nodes[after[0]].input[1], f"BiasAdd {after[0]!r}")
            found.append(GraphWeights(n.name, CONV_OPS[n.op], arrays))
        elif n.op in BN_OPS:
            where = f"{n.op} {n.name!r}"
            roles = ("gamma", "beta", "moving_mean", "moving_variance")
            arrays = {r: constant(n.input[i + 1], where) for i, r in enumerate(roles)}
            epsilon = float(n.attr["epsilon"].f) if "epsilon" in n.attr else 1e-3
            found.append(GraphWeights(n.name, "bn", arrays, epsilon))
    if not found:
        raise QuantflowError(f"{path}: no convolution, BatchNorm or MatMul op in this graph")
    return found


def _topological(graph, source):
    """The graph's nodes in a topological order, ties broken by their order in the file."""
    import heapq

    index = {n.name: i for i, n in enumerate(graph.node)}
    pending = {n.name: 0 for n in graph.node}
    readers: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            src = source(i)
            if src in index:
                pending[n.name] += 1
                readers.setdefault(src, []).append(n.name)
    ready = [index[name] for name, count in pending.items() if count == 0]
    heapq.heapify(ready)
    while ready:
        node = graph.node[heapq.heappop(ready)]
        yield node
        for reader in readers.get(node.name, []):
            pending[reader] -= 1
            if pending[reader] == 0:
                heapq.heappush(ready, index[reader])


def mnasnet_from_frozen_graph(
    path, depth_multiplier: float, input_shape, *, include_top: bool | None = None
):
    """MNasNet-A1 at `depth_multiplier` for inputs of `input_shape` (H, W, C; the graph's
    own input, already preprocessed) holding the weights of the frozen graph at `path`.
    `include_top` None: with the classifier when the graph ends in one (its class count
    taken from it)."""
    from quantflow.models.mnasnet import mnasnet_a1

    found = graph_weights(path)
    dense = [w for w in found if w.kind == "dense"]
    if include_top is None:
        include_top = bool(dense)
    if include_top and len(dense) != 1:
        raise QuantflowError(
            f"{path}: MNasNet's classifier is one MatMul; this graph has {len(dense)}"
        )
    classes = dense[0].arrays["kernel"].shape[-1] if include_top else 1000
    model = mnasnet_a1(
        input_shape, depth_multiplier, include_top=include_top, classes=classes, dropout=0.0
    )
    set_graph_weights(
        model,
        found if include_top else [w for w in found if w.kind != "dense"],
        f"{path}",
        depth_multiplier,
    )
    return model


def set_graph_weights(model, found: list[GraphWeights], source: str, depth_multiplier) -> None:
    """Give `model`'s weighted layers (in order) the graph's weights, checked by kind and
    shape one by one; anything that does not fit stops with the op and the layer named."""
    from keras import layers

    kinds = {
        layers.DepthwiseConv2D: "depthwise",  # before Conv2D: a subclass in some versions
        layers.Conv2D: "conv",
        layers.Dense: "dense",
        layers.BatchNormalization: "bn",
    }
    targets = [layer for layer in model.layers if layer.weights]
    where = f"MNasNet-A1 at depth multiplier {depth_multiplier:g}"
    for i, layer in enumerate(targets):
        kind = next((k for cls, k in kinds.items() if isinstance(layer, cls)), None)
        if i >= len(found):
            raise QuantflowError(
                f"{source}: the graph has {len(found)} weighted ops; {where} needs "
                f"{len(targets)} (the first one missing: layer {layer.name!r}, {kind})"
            )
        w = found[i]
        expected = _expected_shapes(layer, kind)
        got = {role: tuple(a.shape) for role, a in w.arrays.items()}
        if w.kind != kind or got != expected:
            raise QuantflowError(
                f"{source}: weighted op {i} ({w.node!r}: {w.kind} {got}) does not fit {where}: "
                f"layer {layer.name!r} expects {kind} {expected}; is the depth multiplier right?"
            )
        if kind == "bn" and abs(w.epsilon - float(layer.epsilon)) > 1e-9:
            raise QuantflowError(
                f"{source}: BatchNorm {w.node!r} has epsilon {w.epsilon:g}; {where} uses "
                f"{float(layer.epsilon):g}"
            )
        order = {
            "conv": ("kernel", "bias"),
            "depthwise": ("kernel", "bias"),
            "dense": ("kernel", "bias"),
            "bn": ("gamma", "beta", "moving_mean", "moving_variance"),
        }[kind]
        layer.set_weights([w.arrays[r] for r in order if r in w.arrays])
    if len(found) > len(targets):
        extra = found[len(targets)]
        raise QuantflowError(
            f"{source}: the graph has {len(found)} weighted ops, {where} only "
            f"{len(targets)}; the first one left over: {extra.node!r} ({extra.kind})"
        )


def _expected_shapes(layer, kind: str | None) -> dict:
    if kind == "bn":
        return {
            r: tuple(int(d) for d in getattr(layer, r).shape)
            for r in ("gamma", "beta", "moving_mean", "moving_variance")
        }
    if kind is None:
        return {}
    kernel = layer.kernel  # DepthwiseConv2D's too (H, W, C, multiplier)
    shapes = {"kernel": tuple(int(d) for d in kernel.shape)}
    if getattr(layer, "use_bias", False):
        shapes["bias"] = tuple(int(d) for d in layer.bias.shape)
    return shapes
