"""Counting a float Keras model for the MicroNet score: per layer its parameters, its
multiply-accumulates and elementwise operations, with BatchNorm folded and activations
fused as TFLite runs them (see quantflow.quant.micronet)."""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields

import numpy as np

from quantflow.errors import QuantflowError

FULL_BITS = 32


MAC_KINDS = ("conv", "depthwise", "dense")


STEP_KINDS = ("scale", "shift")  # elementwise by constants (Rescaling, Normalization, BN)


KINDS = (
    MAC_KINDS
    + STEP_KINDS
    + (
        "add",
        "multiply",
        "average",
        "maximum",
        "avg_pool",
        "global_avg_pool",
        "max_pool",
        "global_max_pool",
        "activation",
        "float",  # a float island (a layer with no int8 form): everything at 32 bits
    )
)


# (multiplications, additions) per element of an activation run as its own op
ACTIVATION_OPS = {
    "relu": (0, 1),
    "relu6": (0, 1),
    "leaky_relu": (1, 1),
    "sigmoid": (2, 1),
    "tanh": (2, 1),
    "hard_sigmoid": (1, 1),
    "silu": (3, 1),
    "hard_silu": (2, 1),
    "softmax": (2, 1),
    "clamp": (0, 1),  # a ReLU with another max_value
}


@dataclass
class LayerCount:
    """The counts of one operation of the model (see the module doc).

    inputs: one dict per tensor read: "tensor" (its name, the key of its activation bits),
    "channels" (C, the entries of a per-channel bits array), "elements" (values per
    channel) and "view_channels" (channels as this operation sees them, after a Flatten
    or Reshape). MAC kinds: weight channel o meets the input channels of its group
    (groups equal blocks of view channels) in `pair_macs` MACs each."""

    name: str
    kind: str
    layer: str  # the Keras class
    inputs: list
    output: str
    output_channels: int
    output_elements: int  # per channel
    weight_shape: list | None = None
    weight_channels: int = 0  # entries of a per-channel weight bits array
    weights_per_channel: int = 0
    bias: int = 0  # bias values (after BatchNormalization folding)
    groups: int = 1
    pair_macs: int = 0
    multiplications: int = 0
    additions: int = 0
    folded: list = field(default_factory=list)  # BatchNormalization / ReLU layers folded in
    float_parameters: int = 0  # a float island's weights, stored at 32 bits

    @property
    def weights(self) -> int:
        return self.weight_channels * self.weights_per_channel

    @property
    def parameters(self) -> int:
        return self.weights + self.bias + self.float_parameters

    @property
    def operations(self) -> int:
        return self.multiplications + self.additions

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LayerCount":
        names = {f.name for f in fields(cls)}
        required = {
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        }
        unknown, missing = sorted(set(data) - names), sorted(required - set(data))
        if unknown or missing:
            raise QuantflowError(
                f"not a MicroNet layer count: unknown keys {unknown}, missing keys {missing}"
            )
        return cls(**data)


def count_model(model) -> list[LayerCount]:
    """One LayerCount per counted operation of a Keras 3 functional (or built Sequential)
    model, in graph order. Unsupported layers raise a QuantflowError naming them."""
    import keras

    from quantflow.quant.graph import Ref, flatten_graph
    from quantflow.quant.lowering import Plan

    if not isinstance(model, keras.Model):
        raise QuantflowError(f"count_model needs a Keras model, got {type(model).__name__}")
    graph = flatten_graph(model)
    return _Counter(graph, model, keras, Ref, Plan(graph)).run()


def _np(value) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)


def _prod(values) -> int:
    return int(math.prod(int(v) for v in values))


class _Counter:
    """One pass over a flattened graph: shapes (symbolic), tensor names, records."""

    def __init__(self, graph, model, keras, ref_type, plan):
        self.graph, self.model, self.keras, self.ref = graph, model, keras, ref_type
        self.layers = keras.layers
        self.plan = plan  # quant.lowering: what folds and fuses, as the transform does it
        self.shapes: dict = {}  # tensor key -> shape
        self.info: dict = {}  # tensor key -> (name, channels, elements per channel)
        self.records: list[LayerCount] = []
        self.names = {node.path for node in graph.nodes}

    # ---- helpers
    def derived(self, name: str) -> str:
        """A new name (a derived tensor / record name that no layer has)."""
        from quantflow.quant.graph import unique_name  # keras: not at import time

        return unique_name(self.names, name)

    def unsupported(self, node, reason: str = "") -> QuantflowError:
        return QuantflowError(
            f"layer {node.path!r} ({type(node.layer).__name__}) cannot be counted for the "
            f"MicroNet score{': ' + reason if reason else ''}; supported: "
            f"{', '.join(SUPPORTED_LAYERS)} (Activation: "
            f"{', '.join(sorted(ACTIVATION_OPS))}, linear; nested models are flattened)"
        )

    def read(self, key, view_shape: tuple | None = None) -> dict:
        """The description of an operation's read of tensor `key`."""
        name, channels, elements = self.info[key]
        shape = self.shapes[key] if view_shape is None else view_shape
        return {
            "tensor": name,
            "channels": channels,
            "elements": elements,
            "view_channels": _channels(shape),
        }

    def define(self, key, name: str) -> None:
        """Tensor `key` is a quantized tensor of its own, called `name`."""
        shape = self.shapes[key]
        self.info[key] = (name, _channels(shape), _prod(shape[1:-1]))

    def activation_name(self, layer) -> str | None:
        from quantflow.quant.lowering import activation_name  # keras: not at import time

        return activation_name(layer)

    def foldable_bn(self, layer, rank: int) -> bool:
        from quantflow.quant.lowering import foldable_bn

        return foldable_bn(layer, rank)

    def infer_shapes(self, node) -> None:
        keras = self.keras

        def spec(v):
            return keras.KerasTensor(self.shapes[v.key]) if isinstance(v, self.ref) else v

        args, kwargs = keras.tree.map_structure(spec, (node.args, node.kwargs))
        try:
            out = node.layer.compute_output_spec(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - whatever fails: name the layer
            raise self.unsupported(node, f"its output shape is unknown ({exc})") from None
        outs = keras.tree.flatten(out)
        if len(outs) != 1 or len(node.outputs) != 1:
            raise self.unsupported(node, "it has several outputs")
        self.shapes[node.outputs[0]] = _known_shape(outs[0].shape, f"layer {node.path!r}")

    # ---- main
    def run(self) -> list[LayerCount]:
        calls: dict[int, list[str]] = {}
        for node in self.graph.nodes:
            calls.setdefault(id(node.layer), []).append(node.path)
        for paths in calls.values():
            if len(paths) > 1:
                raise QuantflowError(
                    f"layer {paths[0]!r} is called {len(paths)} times (shared weights); the "
                    "MicroNet count supports each layer called once"
                )
        for key, tensor in zip(self.graph.inputs, self.model.inputs):
            self.shapes[key] = _known_shape(tensor.shape, f"model {self.model.name!r} input")
            op = getattr(getattr(tensor, "_keras_history", None), "operation", None)
            self.define(key, self.derived(getattr(op, "name", None) or tensor.name))
        for node in self.graph.nodes:
            self.infer_shapes(node)
        for i, node in enumerate(self.graph.nodes):
            if i not in self.plan.absorbed:  # folded or fused into an earlier one
                self.visit(i, node)
        return self.records

    def visit(self, i: int, node) -> None:
        L, kind, key = self.layers, type(node.layer), node.outputs[0]
        if kind in (L.Conv2D, L.DepthwiseConv2D, L.Dense):
            self.weighted(node, self.plan.ops[i])
        elif kind in _layer_types(L, _FREE):
            self.info[key] = self.info[node.inputs[0]]
        elif kind is L.Concatenate:
            self.define(key, node.path)
        elif kind in _layer_types(L, _MERGES):
            self.merge(node, self.plan.ops.get(i))
        elif kind in _layer_types(L, _POOLS):
            self.pool(node)
        elif kind in _layer_types(L, _ACTIVATION_LAYERS):
            self.activation(node)
        elif kind in _layer_types(L, _AFFINE):
            self.affine(node)
        else:
            self.float_island(node)

    def float_island(self, node) -> None:
        """A layer with no int8 form stays float (quant.transform): counted as float, its
        weights at 32 bits and one 32-bit operation per output value (its true cost is
        unknown here; micronet.json's "float_layers" lists it so the report says so). Its
        output is quantized again, by the quantizer the transform names after the island."""
        from quantflow.quant.lowering import ISLAND_SUFFIX

        key = node.outputs[0]
        inputs = [self.read(k) for k in node.inputs]
        self.define(key, node.path + ISLAND_SUFFIX)
        params = sum(_prod(w.shape) for w in node.layer.weights)
        self.record(
            node,
            "float",
            node.path,
            inputs,
            key,
            multiplications=_prod(self.shapes[key][1:]),
            float_parameters=params,
        )

    def record(self, node, kind: str, name: str, inputs: list, out_key, **counts) -> None:
        shape = self.shapes[out_key]
        self.records.append(
            LayerCount(
                name=name,
                kind=kind,
                layer=type(node.layer).__name__,
                inputs=inputs,
                output=self.info[out_key][0],
                output_channels=_channels(shape),
                output_elements=_prod(shape[1:-1]),
                **counts,
            )
        )

    def weighted(self, node, lowered) -> None:
        """Conv2D / DepthwiseConv2D / Dense (+ folded BatchNormalization, + fused ReLU)."""
        L, layer = self.layers, node.layer
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise self.unsupported(node, "only channels_last is supported")
        if len(node.inputs) != 1:
            raise self.unsupported(node, "it takes several input tensors")
        activation = lowered.activation  # after the ReLU fused into it, if any
        if activation is None:
            what = getattr(layer.activation, "__name__", layer.activation)
            raise self.unsupported(node, f"activation {what!r}")
        in_key, key = node.inputs[0], node.outputs[0]
        in_shape, out_shape = self.shapes[in_key], self.shapes[key]
        out_channels, spatial = _channels(out_shape), _prod(out_shape[1:-1])
        kernel = [int(d) for d in layer.kernel.shape]
        folded, bias = [], out_channels if layer.use_bias else 0
        if lowered.bn is not None:
            folded.append(self.graph.nodes[lowered.bn].path)
            bias = out_channels
        if lowered.fused is not None:
            folded.append(self.graph.nodes[lowered.fused].path)
        elif activation != "linear" and not lowered.split:  # its own ReLU / ReLU6
            folded.append(activation)
        key = lowered.output
        read = self.read(in_key)
        if type(layer) is L.Dense:
            kind, groups = "dense", 1
            per_channel, pair_macs = kernel[0], _prod(in_shape[1:-1])
        elif type(layer) is L.DepthwiseConv2D:
            kind, groups = "depthwise", _channels(in_shape)
            per_channel = kernel[0] * kernel[1]
            pair_macs = per_channel * spatial
        else:
            kind, groups = "conv", int(layer.groups)
            per_channel = kernel[0] * kernel[1] * kernel[2]
            pair_macs = kernel[0] * kernel[1] * spatial
        macs = pair_macs * out_channels * (read["view_channels"] // groups)
        split = lowered.split  # TFLite runs the activation as its own op
        out_key = ("linear", node.path) if split else key
        self.shapes[out_key] = self.shapes[key]
        self.define(out_key, self.derived(f"{node.path}_linear") if split else node.path)
        self.record(
            node,
            kind,
            node.path,
            [read],
            out_key,
            weight_shape=kernel,
            weight_channels=out_channels,
            weights_per_channel=per_channel,
            bias=bias,
            groups=groups,
            pair_macs=pair_macs,
            multiplications=macs,
            additions=macs,
            folded=folded,
        )
        if split:
            name = self.derived(f"{node.path}_{activation}")
            self.define(key, name)
            self.activation_record(node, activation, name, out_key, key)

    def merge(self, node, lowered) -> None:
        """Add, Subtract, Multiply (+ fused ReLU), Average, Maximum, Minimum."""
        L, layer, key = self.layers, node.layer, node.outputs[0]
        channels = _channels(self.shapes[key])
        reads = [self.read(k) for k in node.inputs]
        for r in reads:
            if r["view_channels"] not in (1, channels):
                raise self.unsupported(
                    node,
                    f"input {r['tensor']!r} has {r['view_channels']} channels, its "
                    f"output {channels}",
                )
        folded, name = [], node.path
        if lowered is not None:  # Add, Subtract, Multiply + the ReLU fused into it
            name = self.graph.nodes[lowered.fused].path
            folded.append(name)
            key = lowered.output
        self.define(key, name)
        n, k = _prod(self.shapes[key][1:]), len(reads) - 1
        kind, mults, adds = {
            L.Add: ("add", 0, k * n),
            L.Subtract: ("add", 0, k * n),
            L.Multiply: ("multiply", k * n, 0),
            L.Average: ("average", n, k * n),
            L.Maximum: ("maximum", 0, k * n),
            L.Minimum: ("maximum", 0, k * n),
        }[type(layer)]
        self.record(
            node, kind, node.path, reads, key, multiplications=mults, additions=adds, folded=folded
        )

    def pool(self, node) -> None:
        L, layer = self.layers, node.layer
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise self.unsupported(node, "only channels_last is supported")
        in_key, key = node.inputs[0], node.outputs[0]
        in_shape = self.shapes[in_key]
        average = type(layer) in (L.GlobalAveragePooling2D, L.AveragePooling2D)
        if type(layer) in (L.GlobalAveragePooling2D, L.GlobalMaxPooling2D):
            windows, window = _channels(in_shape), _prod(in_shape[1:-1])
            kind = "global_avg_pool" if average else "global_max_pool"
        else:
            windows, window = _prod(self.shapes[key][1:]), _prod(layer.pool_size)
            kind = "avg_pool" if average else "max_pool"
        if type(layer) is L.GlobalAveragePooling2D:
            self.define(key, node.path)  # MEAN writes a new quantized tensor
        else:
            self.info[key] = self.info[in_key]  # on its input's grid
        self.record(
            node,
            kind,
            node.path,
            [self.read(in_key)],
            key,
            multiplications=windows if average else 0,
            additions=(window - 1) * windows,
        )

    def activation(self, node) -> None:
        """A ReLU / Activation / LeakyReLU / Softmax layer not fused into the layer before."""
        layer, key = node.layer, node.outputs[0]
        name = self.activation_name(layer)
        if name is None and type(layer) is self.layers.Activation:
            return self.float_island(node)  # as the transform leaves it
        if name is None or name not in ("linear", *ACTIVATION_OPS):
            what = getattr(getattr(layer, "activation", None), "__name__", None)
            raise self.unsupported(node, f"activation {what!r}" if what else "")
        if name == "linear":
            self.info[key] = self.info[node.inputs[0]]
            return
        self.define(key, node.path)
        self.activation_record(node, name, node.path, node.inputs[0], key)

    def activation_record(self, node, activation: str, name: str, in_key, out_key) -> None:
        n = _prod(self.shapes[out_key][1:])
        mults, adds = ACTIVATION_OPS[activation]
        self.record(
            node,
            "activation",
            name,
            [self.read(in_key)],
            out_key,
            multiplications=mults * n,
            additions=adds * n,
            folded=[activation],
        )

    def affine(self, node) -> None:
        """Rescaling, Normalization, unfolded BatchNormalization: a multiplication and / or
        an addition step by constants, in TensorFlow's order, identity steps dropped."""
        L, layer, key = self.layers, node.layer, node.outputs[0]
        channels = _channels(self.shapes[key])

        def vector(values, what):
            v = _np(values)
            if v.size > 1 and (v.size != v.shape[-1] or v.size != channels):
                raise self.unsupported(
                    node,
                    f"its {what} (shape {v.shape}) is not one value per channel of "
                    "the last axis",
                )
            return v.reshape(-1)

        if isinstance(layer, L.Rescaling):
            steps = [("mul", vector(layer.scale, "scale")), ("add", vector(layer.offset, "offset"))]
        elif isinstance(layer, L.Normalization):
            if layer.invert:
                raise self.unsupported(node, "invert=True")
            mean, var = vector(layer.mean, "mean"), vector(layer.variance, "variance")
            steps = [("add", -mean), ("mul", 1.0 / np.maximum(np.sqrt(var), 1e-7))]
        else:
            if not self.foldable_bn(layer, len(self.shapes[key])):
                raise self.unsupported(node, f"BatchNormalization over axis {layer.axis}")
            mean = vector(layer.moving_mean, "moving mean")
            var = vector(layer.moving_variance, "moving variance")
            gamma = np.ones_like(mean) if layer.gamma is None else vector(layer.gamma, "gamma")
            beta = np.zeros_like(mean) if layer.beta is None else vector(layer.beta, "beta")
            factor = gamma / np.sqrt(var + layer.epsilon)
            steps = [("mul", factor), ("add", beta - mean * factor)]
        identity = {"mul": 1.0, "add": 0.0}
        steps = [(mode, v) for mode, v in steps if not np.all(v == identity[mode])]
        current = node.inputs[0]
        if not steps:
            self.info[key] = self.info[current]
            return
        n = _prod(self.shapes[key][1:])
        for i, (mode, values) in enumerate(steps):
            last = i == len(steps) - 1
            out_key = key if last else ("step", node.path, i)
            name = node.path if last else self.derived(f"{node.path}_{mode}")
            self.shapes[out_key] = self.shapes[key]
            read = self.read(current, view_shape=self.shapes[key])
            self.define(out_key, name)
            self.record(
                node,
                "scale" if mode == "mul" else "shift",
                name,
                [read],
                out_key,
                weight_shape=[int(values.size)],
                weight_channels=int(values.size),
                weights_per_channel=1,
                multiplications=n if mode == "mul" else 0,
                additions=n if mode == "add" else 0,
            )
            current = out_key


_FREE = (
    "Reshape",
    "Flatten",
    "ZeroPadding2D",
    "Cropping2D",
    "Identity",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
)


_MERGES = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")


_POOLS = ("GlobalAveragePooling2D", "AveragePooling2D", "GlobalMaxPooling2D", "MaxPooling2D")


_ACTIVATION_LAYERS = ("ReLU", "Activation", "LeakyReLU", "Softmax")


_AFFINE = ("Rescaling", "Normalization", "BatchNormalization")


SUPPORTED_LAYERS = (
    ("Conv2D", "DepthwiseConv2D", "Dense")
    + _AFFINE
    + _MERGES
    + ("Concatenate",)
    + _POOLS
    + _ACTIVATION_LAYERS
    + _FREE
)


def _layer_types(layers_module, names: tuple) -> tuple:
    return tuple(getattr(layers_module, n) for n in names)


def _channels(shape) -> int:
    return int(shape[-1]) if len(shape) > 1 else 1


def _known_shape(shape, what: str) -> tuple:
    shape = tuple(shape)
    if any(d is None for d in shape[1:]):
        raise QuantflowError(
            f"{what}: shape {shape} is not fully known; give the model a fixed input shape "
            "to count it"
        )
    return shape
