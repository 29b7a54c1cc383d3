"""The float graph a fake-quant model is built from: the layer calls of a functional (or
Sequential) Keras model in topological order, nested models expanded in place
(`flatten_graph`), each call's arguments with its input tensors replaced by `Ref`s to
tensor keys. Also read by `quantflow.quant.micronet` to count a model's operations."""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
from keras import layers

from quantflow.errors import QuantflowError


@dataclass(frozen=True)
class Ref:
    """A tensor of the flattened graph, standing in for a KerasTensor in call arguments."""

    key: int


@dataclass
class Node:
    """One layer call of the flattened graph."""

    layer: object
    path: str  # the layer's name after the nested models it sits in: "backbone/conv"
    args: tuple
    kwargs: dict
    inputs: list[int]
    outputs: list[int]
    ranks: list[int]  # of the outputs


@dataclass
class Graph:
    """A functional model flattened into nodes in call order, tensors by integer key."""

    nodes: list[Node] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    next_key: int = 0

    def new_key(self) -> int:
        self.next_key += 1
        return self.next_key

    def consumers(self) -> dict[int, list[int]]:
        """Tensor key -> indices of the nodes that read it (once per node)."""
        users: dict[int, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for key in dict.fromkeys(node.inputs):
                users.setdefault(key, []).append(i)
        return users


def unique_name(names: set, base: str) -> str:
    """`base`, or `base_2`, `base_3`, ... : the first not in `names` (which it joins)."""
    name, i = base, 1
    while name in names:
        i += 1
        name = f"{base}_{i}"
    names.add(name)
    return name


def _graph_nodes(model, path: str) -> list:
    """The Keras nodes of a functional model between its inputs and outputs, in
    topological order (iterative depth-first search from the outputs)."""
    input_ids = {id(t) for t in model.inputs}
    order, seen = [], set()
    stack = [(t, False) for t in reversed(model.outputs)]
    while stack:
        tensor, expanded = stack.pop()
        if id(tensor) in input_ids:
            continue
        history = getattr(tensor, "_keras_history", None)
        if history is None or history.operation is None:
            raise QuantflowError(
                f"model {path or model.name!r}: a tensor of its graph has no layer history; "
                "only functional (or Sequential) models can be fake-quantized"
            )
        node = history.operation._inbound_nodes[history.node_index]
        if expanded:
            if id(node) not in seen:
                seen.add(id(node))
                order.append(node)
            continue
        if id(node) in seen:
            continue
        if isinstance(history.operation, layers.InputLayer):
            raise QuantflowError(
                f"model {path or model.name!r}: input {tensor.name!r} is not one of the "
                "model's inputs"
            )
        stack.append((tensor, True))
        stack.extend((t, False) for t in reversed(node.arguments.keras_tensors))
    return order


def _model_graph(model) -> tuple[list, list]:
    """(inputs, outputs) KerasTensors of a functional or Sequential model."""
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise QuantflowError(
            f"model {model.name!r} ({type(model).__name__}) has no functional graph; "
            "only functional or built Sequential models can be fake-quantized"
        )
    return inputs, outputs


def _expand(graph: Graph, model, input_keys: list[int], path: str) -> list[int]:
    """Append the layer calls of `model` (nested models expanded) fed by `input_keys`;
    returns the keys of its outputs."""
    inputs, outputs = _model_graph(model)
    if len(inputs) != len(input_keys):
        raise QuantflowError(f"model {path!r} takes {len(inputs)} inputs, got {len(input_keys)}")
    scope = {id(t): k for t, k in zip(inputs, input_keys)}
    for node in _graph_nodes(model, path):
        op = node.operation
        in_keys = [scope[id(t)] for t in node.arguments.keras_tensors]
        where = f"{path}/{op.name}" if path else op.name
        if isinstance(op, keras.Model):
            out_keys = _expand(graph, op, in_keys, where)
        else:
            out_keys = [graph.new_key() for _ in node.outputs]
            args, kwargs = keras.tree.map_structure(
                lambda v: Ref(scope[id(v)]) if isinstance(v, keras.KerasTensor) else v,
                (node.arguments.args, node.arguments.kwargs),
            )
            ranks = [len(t.shape) for t in node.outputs]
            graph.nodes.append(Node(op, where, tuple(args), dict(kwargs), in_keys, out_keys, ranks))
        for t, k in zip(node.outputs, out_keys):
            scope[id(t)] = k
    return [scope[id(t)] for t in outputs]


def flatten_graph(model) -> Graph:
    """The layer calls of a functional model with nested models expanded in place."""
    graph = Graph()
    inputs, _ = _model_graph(model)
    graph.inputs = [graph.new_key() for _ in inputs]
    graph.outputs = _expand(graph, model, graph.inputs, "")
    return graph
