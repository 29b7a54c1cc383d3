"""The lowering plan: what TFLite makes of a Keras graph, decided once and read by the
fake-quant transform (quant.transform), the MicroNet counter (quant.micronet.count) and the
export check (deploy.check). Which BatchNormalization folds into which layer, which
activation fuses where, which activations have a fixed output range, which ops keep their
input's grid (Keras layers and TFLite ops), which merges share one output scale, which
layers are dropped, and so which layers can be lowered at all.

    plan = Plan(flatten_graph(model))
    plan.ops[i]          # Lowered(bn, fused, activation, output) of weighted layer / merge i
    plan.absorbed        # nodes folded or fused into an earlier one (no op of their own)
"""

from __future__ import annotations

from dataclasses import dataclass

from keras import layers

FUSED_ACTIVATIONS = ("linear", "relu", "relu6")  # what TFLite fuses into CONV/FC/ADD/MUL
FUSABLE = ("relu", "relu6")  # an activation layer TFLite fuses into the op before it
# every activation a layer may compute; the others run as an op of their own after it
# (clamp: a ReLU with another max_value)
ACTIVATIONS = FUSED_ACTIVATIONS + ("sigmoid", "hard_sigmoid", "silu", "hard_silu", "tanh")
ACTIVATIONS += ("softmax", "leaky_relu", "clamp")
ACTIVATION_ALIASES = {"swish": "silu", "hard_swish": "hard_silu"}
NON_NEGATIVE_ACTIVATIONS = ("relu", "relu6", "sigmoid", "hard_sigmoid", "softmax")
TIE_MARGIN = 1.01  # widening of a fixed range whose grid would put values on rounding ties


def fixed_output_range(activation: str, bits: int) -> tuple[float, float] | None:
    """The output range TFLite imposes on an activation (8 bits: LOGISTIC and SOFTMAX scale
    1/256 zero point -128, TANH scale 1/128 zero point 0), or None."""
    if activation in ("sigmoid", "softmax"):
        return 0.0, 1.0 - 2.0**-bits
    if activation == "tanh":
        return -1.0, 1.0 - 2.0 ** (1 - bits)
    return None


DROPPED = (
    layers.Dropout,
    layers.SpatialDropout1D,
    layers.SpatialDropout2D,
    layers.GaussianNoise,
    layers.GaussianDropout,
    layers.AlphaDropout,
    layers.ActivityRegularization,
)
# ops TFLite runs on their input's int8 grid (same scale and zero point in and out)
SAME_GRID = (
    layers.Reshape,
    layers.Flatten,
    layers.ZeroPadding2D,
    layers.Cropping2D,
    layers.MaxPooling2D,
    layers.GlobalMaxPooling2D,
    layers.Identity,
)
MERGES = (
    layers.Add,
    layers.Subtract,
    layers.Multiply,
    layers.Average,
    layers.Maximum,
    layers.Minimum,
    layers.Concatenate,
)
# merges whose inputs TFLite puts on the output's grid (the converter overrides their ranges)
SHARED_SCALE_MERGES = (layers.Concatenate, layers.Maximum, layers.Minimum)
FUSING_MERGES = (layers.Add, layers.Subtract, layers.Multiply)  # TFLite fuses ReLU(6) there
POOLS = (layers.GlobalAveragePooling2D, layers.AveragePooling2D)
AFFINE = (layers.Rescaling, layers.Normalization, layers.BatchNormalization)
ACTIVATION_LAYERS = (layers.ReLU, layers.Activation, layers.LeakyReLU, layers.Softmax)
WEIGHTED = (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)
LOWERED = WEIGHTED + MERGES + POOLS + AFFINE + ACTIVATION_LAYERS + SAME_GRID + DROPPED
SUPPORTED_LAYERS = tuple(cls.__name__ for cls in LOWERED)

# Any other layer (a custom or Lambda layer) is a float island: it computes in float
# between DEQUANTIZE and QUANTIZE ops, its output quantized again. Its copy in a fake-quant
# model is named <layer>ISLAND_SUFFIX, so the converter can be told to leave it float.
ISLAND_SUFFIX = "__float_island"


def island_scope(layer: str):
    """The pattern of the TensorFlow names (in a converted model) of float island `layer`'s
    ops, fences and output quantizer."""
    import re

    return re.compile(rf"(^|/){re.escape(layer + ISLAND_SUFFIX)}[^/]*/")


def island_layers(qmodel) -> list[dict]:
    """The float-island layers of a fake-quant model: "layer" (the float model's layer
    name) and "class" (its Keras class)."""
    return [
        {"layer": layer.name[: -len(ISLAND_SUFFIX)], "class": type(layer).__name__}
        for layer in qmodel.layers
        if layer.name.endswith(ISLAND_SUFFIX)
    ]


# TFLite ops whose int8 output has its input's scale and zero point (no quantizer of their
# own), and those whose inputs take the output's grid: the export check walks TFLite graphs
SAME_GRID_OPS = (
    "PAD",
    "PADV2",
    "MAX_POOL_2D",
    "RESHAPE",
    "SQUEEZE",
    "EXPAND_DIMS",
    "STRIDED_SLICE",
    "SLICE",
    "TRANSPOSE",
    "GATHER",
    "SPACE_TO_DEPTH",
    "DEPTH_TO_SPACE",
    "AVERAGE_POOL_2D",
    "MAXIMUM",
    "MINIMUM",
)
SHARED_GRID_OPS = ("CONCATENATION", "MAXIMUM", "MINIMUM")
# weights of at most INT4_BITS bits are stored as INT4 (two codes a byte, the b-bit step as
# scale) on the ops whose int8 kernels LiteRT runs with int4 filters; more bits: int8
INT4_BITS = 4
INT4_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def activation_name(layer) -> str | None:
    """The activation a ReLU / LeakyReLU / Softmax / Activation layer (or a layer's
    `activation`) computes, as one of ACTIVATIONS, or None when it is none of them."""
    if isinstance(layer, layers.ReLU):
        if float(layer.threshold) != 0.0:
            return None
        if float(layer.negative_slope) != 0.0:
            return "leaky_relu" if layer.max_value is None else None
        if layer.max_value is None:
            return "relu"
        return "relu6" if float(layer.max_value) == 6.0 else "clamp"
    if isinstance(layer, layers.LeakyReLU):
        return "leaky_relu"
    if isinstance(layer, layers.Softmax):
        return "softmax"
    name = getattr(getattr(layer, "activation", None), "__name__", None)
    name = ACTIVATION_ALIASES.get(name, name)
    return name if name in ACTIVATIONS else None


def foldable_bn(layer, rank: int) -> bool:
    """Whether `layer` is a BatchNormalization over the last axis of a rank-`rank` tensor."""
    if type(layer) is not layers.BatchNormalization:
        return False
    axis = layer.axis[0] if isinstance(layer.axis, (list, tuple)) else layer.axis
    return axis in (-1, rank - 1)


@dataclass(frozen=True)
class Lowered:
    """What a weighted layer (Conv2D, DepthwiseConv2D, Dense) or a fusing merge (Add,
    Subtract, Multiply) becomes: `bn` the BatchNormalization node folded into it, `fused`
    the ReLU / ReLU6 node fused into it (node indices, or None), `activation` what it
    computes after them (None: an activation no TFLite op has), `output` the tensor key the
    op writes. `split`: the activation runs as an op of its own after it."""

    bn: int | None
    fused: int | None
    activation: str | None
    output: int

    @property
    def split(self) -> bool:
        return self.activation is not None and self.activation not in FUSED_ACTIVATIONS


class Plan:
    """The lowering of a flattened graph (quant.graph.flatten_graph), in graph order: a
    BatchNormalization over the last axis that is the only reader of a linear weighted
    layer's output folds into it; then a ReLU / ReLU6 layer that is the only reader of the
    result (or of an Add / Subtract / Multiply) fuses into it. A model output is never
    folded or fused away."""

    def __init__(self, graph):
        self.graph = graph
        self.users = graph.consumers()
        self.ops: dict[int, Lowered] = {}
        self.absorbed: dict[int, int] = {}  # folded / fused node -> the node it went into
        for i, node in enumerate(graph.nodes):
            if i in self.absorbed:
                continue
            kind = type(node.layer)
            if kind in WEIGHTED:
                self.ops[i] = self._weighted(i, node)
            elif kind in FUSING_MERGES and len(node.outputs) == 1:
                fused = self.fusable(node.outputs[0])
                if fused is not None:
                    self.absorbed[fused] = i
                    self.ops[i] = Lowered(
                        None, fused, self.name(fused), graph.nodes[fused].outputs[0]
                    )

    def _weighted(self, i: int, node) -> Lowered:
        activation, key = activation_name(node.layer), node.outputs[0]
        bn = fused = None
        if activation == "linear":
            user = self.sole_user(key)
            if user is not None and foldable_bn(self.graph.nodes[user].layer, node.ranks[0]):
                bn, key = user, self.graph.nodes[user].outputs[0]
                self.absorbed[bn] = i
            fused = self.fusable(key)
            if fused is not None:
                self.absorbed[fused] = i
                key, activation = self.graph.nodes[fused].outputs[0], self.name(fused)
        return Lowered(bn, fused, activation, key)

    def name(self, index: int) -> str | None:
        return activation_name(self.graph.nodes[index].layer)

    def sole_user(self, key: int) -> int | None:
        """The index of the only node reading tensor `key` (None if it is a model output or
        read by several nodes)."""
        users = self.users.get(key, [])
        if len(users) != 1 or key in self.graph.outputs:
            return None
        return users[0]

    def fusable(self, key: int) -> int | None:
        """The node index of a ReLU / ReLU6 layer that is the only reader of `key`, else None."""
        user = self.sole_user(key)
        if user is None or user in self.absorbed:
            return None
        layer = self.graph.nodes[user].layer
        if type(layer) not in (layers.ReLU, layers.Activation):
            return None
        return user if activation_name(layer) in FUSABLE else None

    def feeds_shared_scale(self, key: int) -> bool:
        """Whether tensor `key` only reaches a Concatenate / Maximum / Minimum (possibly
        through same-grid ops): TFLite quantizes it with that op's output range."""
        user = self.sole_user(key)
        while user is not None and type(self.graph.nodes[user].layer) in SAME_GRID:
            user = self.sole_user(self.graph.nodes[user].outputs[0])
        return user is not None and type(self.graph.nodes[user].layer) in SHARED_SCALE_MERGES
