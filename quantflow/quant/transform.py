"""Fake quantization of a Keras 3 functional model "in the TFLite manner", with trainable
FAT thresholds (Goncharenko et al., "Fast Adjustable Threshold For Uniform Neural Network
Quantization", arXiv 1812.07872).

`fake_quant_model` rebuilds a float classifier as the graph TFLite's int8 kernels execute,
every rounding explicit (`tf.quantization.fake_quant_*` ops). Converted with
`quantflow.deploy.convert.convert(qmodel, "int8", calibration)` it becomes a fully int8 TFLite model
that uses these ranges, so the Keras model predicts what the device will: the quantized
layers compute TFLite's integer arithmetic exactly (int32 bias on the accumulator's grid,
integer accumulators, XNNPACK's float32 requantization and fixed-point ADD; see
`quantflow.quant.layers`), so the logits match LiteRT's to the output step on the zoo
models, not only the top-1 class. `export_mode` (used by `quantflow.deploy.convert`) traces
the graph the converter expects instead.

* Conv2D, DepthwiseConv2D and Dense become `QConv2D`, `QDepthwiseConv2D`, `QDense`: a
  BatchNormalization right after one (its only consumer, the layer being linear) is folded
  into the kernel and a float bias (TFLite stores it as int32), and a following ReLU /
  ReLU6 (only consumer) is fused, as TFLite fuses them. The kernel is quantized symmetric,
  narrow range, per output channel (or per tensor) to [-T, T] (below 8 bits handed to the
  converter as int8 on a grid that contains the b-bit one, see `int8_grid`). Other
  activations are separate int8 ops in TFLite, so they get a quantizer before and after.
* `ActivationQuant` quantizes one tensor: the model input, the output of every quantized
  layer (after its fused activation), of Add, Subtract, Multiply, Average, Concatenate,
  Maximum, Minimum, average pooling, standalone activations and the logits.
  - Add, Subtract and Multiply followed by their only consumer ReLU / ReLU6 are quantized
    after the activation (fused in TFLite).
  - Sigmoid and softmax outputs have TFLite's fixed range [0, 255/256] (tanh [-1, 127/128]);
    swish is LOGISTIC then MUL, with the sigmoid quantized in between, as TFLite runs it.
  - Max pooling, Reshape, Flatten, ZeroPadding2D and Cropping2D keep their input's grid (no
    quantizer); AveragePooling2D rounds back onto its input's grid (same quantizer).
  - A tensor that only feeds a Concatenate / Maximum / Minimum gets no quantizer of its
    own: TFLite puts it on that op's output grid, so it is rounded once, by that op's.
  - Rescaling, Normalization and a BatchNormalization that cannot be folded become per-
    channel MUL / ADD steps (`QAffine`, constants quantized as TFLite stores them), each
    with its own quantizer.
  Dropout and noise layers are dropped; a functional model nested in another (transfer
  learning wrapper) is flattened first.
* Any other layer (a Lambda, a user's custom layer, an LSTM) is a float island: it
  computes in float on its dequantized input and its output gets a quantizer; the int8
  TFLite file keeps its ops float too, between DEQUANTIZE and QUANTIZE (fenced by exact
  CAST round trips, `IslandFence`; `quantflow.deploy.convert`). A weighted layer whose
  activation TFLite cannot run, or a layer with several outputs, raises a QuantflowError
  naming it.
* The model INPUT is quantized to a fixed range, (0, 255) by default: 8-bit scale 1 and
  zero point -128, so integer pixels are exact in the TFLite model's int8 input. The
  preprocessing steps after it get fixed ranges too, the image of the input range:
  Rescaling(1/255) stays exact; an offset that is not a whole number of input steps (as
  Rescaling(1/127.5, -1)) cannot be exact with zero on the grid, and its range is widened
  by TIE_MARGIN so no value sits on a rounding tie. `input_range=None` calibrates the
  input quantizer like any other (signed).

Thresholds (FAT): symmetric, T = clip(alpha, 0.5, 1) * T_max, range [-T, T * 127/128] for
signed (8 bits: scale T/128, int8 zero point exactly 0; [-T, T] would put the zero point on
a tie that TensorFlow and the converter round differently) and [0, T] for non-negative tensors (after ReLU, ReLU6, sigmoid, softmax, and ops of those).
Asymmetric activations (`symmetric=False`): the calibrated range [m, M] with R = M - m
becomes lo = m + clip(alpha_T) * R (alpha_T in [-0.2, 0.4], [0, 0.4] if non-negative) and
hi = lo + clip(alpha_R, 0.5, 1) * R, then widened to contain 0 (TFLite must represent zero
exactly, so for a non-negative tensor lo stays 0). Weights are always symmetric (TFLite int8
weights have zero point 0). The alphas start at their neutral values and are the only
trainable variables of the model; T_max (m, M) comes from `calibrate` (activations, float
statistics) and max|W| (weights). Fixed ranges have no alphas.

The quantizers get the FAT gradient (straight-through for the rounding): for a value
inside the range d y / d hi = (y - x) / (hi - lo) = -d y / d lo, outside it the gradient
goes to the nearer edge, so training shrinks a range that is too wide, not only widens one
(TensorFlow's own fake-quant gradient only ever widens).

This module is the façade of the quantization core, `quantflow.quant` (what lives where:
see that package's doc); it re-exports the API the rest of the repository uses. The
per-layer config (`overrides={"logits": {"weight_bits": 8}}` or a whole
`quantflow.quant.config.QuantConfig`) is accepted by `fake_quant_model`.


The graph transform: a flattened float graph (`quantflow.quant.graph`) rebuilt as the
graph TFLite's int8 kernels execute, every rounding explicit. Conv2D, DepthwiseConv2D and
Dense become `QConv2D`, `QDepthwiseConv2D`, `QDense` with a following BatchNormalization
folded and a ReLU / ReLU6 fused (their only consumer), as TFLite does; activation
quantizers (`ActivationQuant`) are placed where TFLite has an int8 tensor with its own
scale (the rules: `quantflow.quant.lowering`; see `quantflow.quant.transform` for the full list).
What each layer gets (bits, granularity, symmetry, which quantizer implementation) is
asked of the per-layer config (`quantflow.quant.config.QuantConfig`), never decided here."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from quantflow.errors import QuantflowError
from quantflow.quant.config import LayerQuant, QuantConfig
from quantflow.quant.folding import (
    affine_range,
    affine_steps,
    float_kernel,
    fold_batch_norm,
)
from quantflow.quant.graph import Graph, Node, Ref, flatten_graph, unique_name
from quantflow.quant.layers import (
    ActivationQuant,
    IslandFence,
    QAdd,
    QAffine,
    QConv2D,
    QDense,
    QDepthwiseConv2D,
)
from quantflow.quant.lowering import (
    ACTIVATION_LAYERS,
    ACTIVATIONS,
    AFFINE,
    DROPPED,
    ISLAND_SUFFIX,
    MERGES,
    NON_NEGATIVE_ACTIVATIONS,
    POOLS,
    SAME_GRID,
    SHARED_SCALE_MERGES,
    WEIGHTED,
    Lowered,
    Plan,
    activation_name,
    fixed_output_range,
)


@dataclass
class _Tensor:
    """A tensor of the fake-quant graph: its KerasTensor, whether it is known non-negative,
    the constant range of its quantizer (None: calibrated) and the ActivationQuant whose grid
    it lies on (None: not quantized yet, e.g. an ADD output before its fused ReLU)."""

    value: object
    non_negative: bool
    fixed: tuple | None = None
    grid: ActivationQuant | None = None


class _Transform:
    """Builds the fake-quant graph from a flattened float graph (see fake_quant_model)."""

    def __init__(self, graph: Graph, config: QuantConfig, input_names: list[str]):
        self.graph, self.plan = graph, Plan(graph)
        self.config = config
        # the layer (name, path) whose settings apply to each tensor's quantizers: model
        # inputs by their names, a node's outputs by its layer (fused ones: the layer they
        # are fused into, which is the node being visited when they are quantized)
        self.owners = {key: (name, name) for key, name in zip(graph.inputs, input_names)}
        for node in graph.nodes:
            for key in node.outputs:
                self.owners[key] = (node.layer.name, node.path)
        self.spec: LayerQuant = config.default  # of the layer being rewritten
        self.tensors: dict[int, _Tensor] = {}
        # nodes folded or fused into a weighted layer (a ReLU fused into a merge stays in
        # the Keras graph: it clamps the merge's output before its quantizer)
        self.skip = {
            node
            for node, into in self.plan.absorbed.items()
            if type(graph.nodes[into].layer) in WEIGHTED
        }
        self.link_after: dict[int, tuple] = {}  # tensor key -> (QAdd, input grids) to link
        self.names: set[str] = set()
        self.islands: list[dict] = []  # layers left float (float_island)

    def settings(self, owner: tuple[str, str]) -> LayerQuant:
        """Make the config's settings of layer `owner` (name, path) the current ones."""
        self.spec = self.config.for_layer(*owner)
        return self.spec

    # ---- helpers
    def name(self, base: str) -> str:
        return unique_name(self.names, base)

    def quantizer(self, name: str, non_negative: bool, fixed=None) -> ActivationQuant:
        return ActivationQuant(
            bits=self.spec.activation_bits,
            signed=not non_negative,
            symmetric=self.spec.symmetric,
            fixed_range=fixed,
            quantizer=self.spec.activation_quantizer,
            quantizer_options=self.spec.quantizer_options("activation"),
            name=self.name(f"{name}_quant"),
        )

    def quantized(self, x, name: str, non_negative: bool, fixed=None) -> _Tensor:
        """`x` through a new quantizer."""
        quantizer = self.quantizer(name, non_negative, fixed)
        return _Tensor(quantizer(x), non_negative, fixed, quantizer)

    def finish(self, key: int, x, name: str, non_negative: bool, fixed=None) -> None:
        """Set tensor `key` to `x` quantized by its own quantizer, unless TFLite gives it the
        range of the Concatenate (...) it feeds, whose quantizer then rounds it once."""
        if fixed is None and self.plan.feeds_shared_scale(key):
            self.tensors[key] = _Tensor(x, non_negative)
        else:
            self.tensors[key] = self.quantized(x, name, non_negative, fixed)
        if key in self.link_after:  # a QAdd whose fused ReLU this quantizer follows
            add, inputs = self.link_after.pop(key)
            add.link(inputs, self.tensors[key].grid)

    def fill(self, value):
        return keras.tree.map_structure(
            lambda v: self.tensors[v.key].value if isinstance(v, Ref) else v, value
        )

    def clone_call(self, node: Node):
        layer = node.layer
        config = layer.get_config()
        config["name"] = self.name(layer.name)
        clone = type(layer).from_config(config)
        kwargs = {k: v for k, v in self.fill(node.kwargs).items() if k != "training"}
        out = clone(*self.fill(node.args), **kwargs)
        if layer.weights:
            clone.set_weights(layer.get_weights())
        return out

    def unsupported(self, node: Node, reason: str = "") -> QuantflowError:
        return QuantflowError(
            f"layer {node.path!r} ({type(node.layer).__name__}) cannot be fake-quantized"
            f"{': ' + reason if reason else ''}"
        )

    # ---- main
    def run(self, model, input_range) -> keras.Model:
        inputs = []
        for key, tensor in zip(self.graph.inputs, model.inputs):
            x = keras.Input(shape=tensor.shape[1:], dtype=tensor.dtype, name=self.name(tensor.name))
            inputs.append(x)
            nonneg = input_range is not None and input_range[0] >= 0
            self.settings(self.owners[key])
            self.tensors[key] = self.quantized(x, x.name, nonneg, input_range)
        for i, node in enumerate(self.graph.nodes):
            if i not in self.skip:
                self.settings((node.layer.name, node.path))
                self.visit(i, node)
        outputs = []
        for key in self.graph.outputs:
            t = self.tensors[key]
            self.settings(self.owners[key])
            outputs.append(
                t.value
                if t.grid is not None
                else self.quantized(t.value, f"output_{len(outputs)}", t.non_negative).value
            )
        return keras.Model(
            inputs if len(inputs) > 1 else inputs[0],
            outputs if len(outputs) > 1 else outputs[0],
            name=f"{model.name}_fakequant",
        )

    def visit(self, i: int, node: Node) -> None:
        layer, kind = node.layer, type(node.layer)
        if kind in WEIGHTED:
            return self.weighted(node, self.plan.ops[i])
        if len(node.outputs) != 1:
            raise self.unsupported(node, "it has several outputs")
        key, ins = node.outputs[0], [self.tensors[k] for k in node.inputs]
        nonneg_in = all(t.non_negative for t in ins)
        if kind in DROPPED:
            self.tensors[key] = ins[0]
        elif kind in SAME_GRID:
            self.tensors[key] = _Tensor(self.clone_call(node), nonneg_in, ins[0].fixed, ins[0].grid)
        elif kind in ACTIVATION_LAYERS:
            self.activation(node, ins[0])
        elif kind in MERGES:
            self.merge(node, ins, self.plan.ops.get(i))
        elif kind is layers.AveragePooling2D and ins[0].grid is not None:
            # AVERAGE_POOL_2D keeps its input's scale: round back onto the input's grid
            out = ins[0].grid(self.clone_call(node))
            self.tensors[key] = _Tensor(out, nonneg_in, ins[0].fixed, ins[0].grid)
        elif kind in POOLS:
            self.finish(key, self.clone_call(node), layer.name, nonneg_in)
        elif kind in AFFINE:
            self.affine(node, ins[0])
        else:
            self.float_island(node, key)

    def float_island(self, node: Node, key: int) -> None:
        """A layer with no int8 form (a custom or Lambda layer) computes in float on its
        dequantized inputs, between `IslandFence`s, and its output is quantized again:
        TFLite runs it between DEQUANTIZE and QUANTIZE ops. Its copy is named
        <layer>ISLAND_SUFFIX (`lowering.island_layers`), and so are its fences and output
        quantizer: the converter is told to leave the ops under that name float."""
        layer = node.layer
        self.islands.append({"layer": node.path, "class": type(layer).__name__})
        name = self.name(layer.name + ISLAND_SUFFIX)
        if type(layer) is layers.Lambda:  # its function is in memory: no deserialization
            clone = layers.Lambda(
                layer.function,
                output_shape=layer._output_shape,
                mask=layer.mask,
                arguments=layer.arguments,
                name=name,
            )
        else:
            config = layer.get_config()
            config["name"] = name
            clone = type(layer).from_config(config)

        def fence(x):
            return IslandFence(name=self.name(f"{name}_fence"))(x)

        args = keras.tree.map_structure(
            lambda v: fence(v) if isinstance(v, keras.KerasTensor) else v, self.fill(node.args)
        )
        kwargs = {k: v for k, v in self.fill(node.kwargs).items() if k != "training"}
        out = fence(clone(*args, **kwargs))
        if layer.weights:
            clone.set_weights(layer.get_weights())
        self.finish(key, out, name, False)

    def merge(self, node: Node, ins: list[_Tensor], lowered: Lowered | None) -> None:
        layer, key = node.layer, node.outputs[0]
        grids = [t.grid for t in ins]
        exact_add = type(layer) is layers.Add and len(ins) == 2 and None not in grids
        if exact_add:
            add = QAdd(name=self.name(layer.name))
            out = add([t.value for t in ins])
        else:
            out = self.clone_call(node)
        nonneg = all(t.non_negative for t in ins) and type(layer) is not layers.Subtract
        fixed = ins[0].fixed
        if type(layer) in SHARED_SCALE_MERGES and fixed and all(t.fixed == fixed for t in ins):
            self.tensors[key] = _Tensor(out, nonneg, fixed, ins[0].grid)  # e.g. gray -> RGB
        elif lowered is not None:  # quantized after the ReLU fused into it
            self.tensors[key] = _Tensor(out, nonneg)
            if exact_add:
                self.link_after[lowered.output] = (add, grids)
        else:
            self.finish(key, out, layer.name, nonneg)
            if exact_add:
                add.link(grids, self.tensors[key].grid)

    def activation(self, node: Node, x: _Tensor) -> None:
        layer, key = node.layer, node.outputs[0]
        name = activation_name(layer)
        if type(layer) is layers.Activation and name is None:
            return self.float_island(node, key)  # e.g. gelu: TFLite has no int8 form here
        if name == "linear":
            self.tensors[key] = x
        elif type(layer) is layers.Activation:
            self.emit_activation(key, x.value, name, layer.name)
        elif type(layer) is layers.Softmax:
            fixed = fixed_output_range("softmax", self.spec.activation_bits)
            self.finish(key, self.clone_call(node), layer.name, True, fixed)
        else:
            nonneg = type(layer) is layers.ReLU and float(layer.negative_slope) == 0.0
            self.finish(key, self.clone_call(node), layer.name, nonneg)

    def emit_activation(self, key: int, x, activation: str, name: str) -> None:
        """A standalone activation on a quantized tensor as TFLite runs it. Sigmoid, softmax
        and tanh get TFLite's fixed output range; swish (silu) is LOGISTIC then MUL, with the
        sigmoid quantized in between."""
        bits = self.spec.activation_bits
        if activation == "silu":
            s = layers.Activation("sigmoid", name=self.name(f"{name}_sigmoid"))(x)
            s = self.quantized(s, f"{name}_sigmoid", True, fixed_output_range("sigmoid", bits))
            y = layers.Multiply(name=self.name(name))([x, s.value])
            return self.finish(key, y, name, False)
        y = layers.Activation(activation, name=self.name(name))(x)
        fixed = fixed_output_range(activation, bits)
        self.finish(key, y, name, activation in NON_NEGATIVE_ACTIVATIONS, fixed)

    def affine(self, node: Node, x: _Tensor) -> None:
        """Rescaling, Normalization, standalone BatchNormalization: per-channel MUL and ADD
        steps (`QAffine`) in TensorFlow's order, each an int8 op with its own quantizer. On a
        fixed-range input the output ranges are fixed too: the image of the input range
        (exact for a scalar scale), widened by TIE_MARGIN after an offset that is not a
        whole number of input steps (else every value would sit on a rounding tie)."""
        layer, key = node.layer, node.outputs[0]
        steps = affine_steps(layer, node)
        if not steps:
            self.tensors[key] = x
        for i, (mode, values) in enumerate(steps):
            name = layer.name if i == len(steps) - 1 else f"{layer.name}_{mode}"
            op = QAffine(mode, values, bits=self.spec.activation_bits, name=self.name(name))
            value = op(x.value)
            c = np.asarray(op.constant(), dtype=np.float64)
            if x.fixed is not None:
                fixed = affine_range(x.fixed, mode, c, self.spec.activation_bits)
                nonneg = fixed[0] >= 0
            else:
                fixed, nonneg = None, x.non_negative and bool(np.all(c >= 0))
            if i == len(steps) - 1:
                self.finish(key, value, name, nonneg, fixed)
            else:
                x = self.quantized(value, name, nonneg, fixed)

    def weighted(self, node: Node, lowered: Lowered) -> None:
        """Conv2D / DepthwiseConv2D / Dense (+ folded BN, + fused ReLU/ReLU6) -> Q layer."""
        layer = node.layer
        kernel, bias = float_kernel(layer, node)
        activation = lowered.activation
        if activation is None:
            what = getattr(layer.activation, "__name__", layer.activation)
            raise self.unsupported(
                node, f"activation {what!r} (supported: {', '.join(ACTIVATIONS)})"
            )
        if lowered.bn is not None:
            kernel, bias = fold_batch_norm(layer, kernel, bias, self.graph.nodes[lowered.bn].layer)
        key, split = lowered.output, lowered.split
        q = _quantized_layer(
            layer, "linear" if split else activation, self.spec, self.name(layer.name)
        )
        q.link_input(self.tensors[node.inputs[0]].grid)
        out = q(self.fill(node.args)[0])
        q.set_kernel(kernel, bias)
        if split:  # TFLite runs it as its own int8 op: quantize before and after
            linear = self.quantized(out, layer.name + "_linear", False)
            q.link_output(linear.grid)
            self.emit_activation(key, linear.value, activation, f"{layer.name}_{activation}")
        else:
            self.finish(key, out, layer.name, activation != "linear")
            q.link_output(self.tensors[key].grid)


def _quantized_layer(layer, activation: str, spec: LayerQuant, name: str):
    common = {
        "activation": activation,
        "bits": spec.weight_bits,
        "per_channel": spec.per_channel,
        "weight_quantizer": spec.weight_quantizer,
        "quantizer_options": spec.quantizer_options("weight"),
        "name": name,
    }
    if type(layer) is layers.Dense:
        return QDense(layer.units, **common)
    conv = {
        "kernel_size": layer.kernel_size,
        "strides": layer.strides,
        "padding": layer.padding,
        "dilation_rate": layer.dilation_rate,
    }
    if type(layer) is layers.DepthwiseConv2D:
        return QDepthwiseConv2D(depth_multiplier=layer.depth_multiplier, **conv, **common)
    return QConv2D(layer.filters, **conv, **common)


def fake_quant_model(
    model,
    *,
    weight_bits: int = 8,
    activation_bits: int = 8,
    per_channel: bool = True,
    symmetric: bool = True,
    input_range: tuple[float, float] | None = (0.0, 255.0),
    overrides: dict | None = None,
    config: QuantConfig | dict | None = None,
) -> keras.Model:
    """The fake-quantized twin of a float functional Keras model (see `quantflow.quant.transform`),
    or of the model a weights pickle describes (`quantflow.formats.weights.extract_weights` /
    `load_weights`: its arrays plus architecture). The scheme: `weight_bits` and
    `activation_bits` from 2 to 16; `per_channel` weight thresholds; `symmetric` activation
    ranges (weights are always symmetric); `overrides` {layer-name glob: settings} for some
    layers (see `quantflow.quant.config`), or the whole per-layer `config` instead of all
    of those (a QuantConfig or its `to_dict()`); `input_range` the fixed range of the model
    input (None: calibrated). Call `calibrate` before using it."""
    scheme = {
        "weight_bits": weight_bits,
        "activation_bits": activation_bits,
        "per_channel": per_channel,
        "symmetric": symmetric,
    }
    if config is None:
        for what in ("weight_bits", "activation_bits"):  # the message users know
            bits = scheme[what]
            if (
                isinstance(bits, bool)
                or not isinstance(bits, (int, np.integer))
                or not 2 <= bits <= 16
            ):
                raise QuantflowError(f"{what} must be a whole number from 2 to 16, got {bits!r}")
        scheme = {k: (int(v) if k.endswith("_bits") else bool(v)) for k, v in scheme.items()}
        config = QuantConfig(scheme, overrides)
    else:
        if overrides is not None or any(scheme[k] != getattr(LayerQuant(), k) for k in scheme):
            raise QuantflowError(
                "fake_quant_model: give either `config` or the scheme (weight_bits, "
                "activation_bits, per_channel, symmetric, overrides), not both"
            )
        if isinstance(config, dict):
            config = QuantConfig.from_dict(config)
    if input_range is not None:
        input_range = (float(input_range[0]), float(input_range[1]))
        if not input_range[0] <= 0.0 <= input_range[1] or input_range[0] == input_range[1]:
            raise QuantflowError(f"input_range {input_range} must contain 0 and not be empty")
    if isinstance(model, dict):
        from quantflow.formats.weights import check_weights, rebuild_model

        model = rebuild_model(check_weights(model))
    if not isinstance(model, keras.Model):
        raise QuantflowError(
            f"fake_quant_model needs a Keras model or a weights pickle's contents, got "
            f"{type(model).__name__}"
        )
    graph = flatten_graph(model)
    names = [t.name for t in model.inputs]
    unmatched = config.unmatched(
        [(n, n) for n in names] + [(node.layer.name, node.path) for node in graph.nodes]
    )
    if unmatched:
        raise QuantflowError(
            f"quantization overrides {unmatched} match no layer of model {model.name!r}"
        )
    return _Transform(graph, config, names).run(model, input_range)
