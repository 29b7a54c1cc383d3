"""A float .tflite model rebuilt as a Keras 3 functional model of standard layers.

`keras_from_tflite(path)` reads the flatbuffer with LiteRT's own schema objects
(`ai_edge_litert.tools.flatbuffer_utils.read_model`, enums and option classes from
`ai_edge_litert.schema_py_generated`) and rebuilds subgraph 0 op by op. Only standard Keras
layers are used (no Lambda, no custom layer), so the rest of quantflow (the fake-quant
transform, the MicroNet counter, the lowering plan) treats the result like any Keras model.
Every decision of the mapping is here:

Model and tensors
* Only float models: every subgraph input must be FLOAT32, and an op that produces an
  8/16-bit integer tensor (a QUANTIZE, an int8 model) stops the import with one line saying
  so. Weights must be FLOAT32 constants, or FLOAT16 constants behind a DEQUANTIZE (the fp16
  model: the dequantized float32 value is the weight, as LiteRT does at load time); an
  INT8 weight (dynamic-range or weight-only quantized model) is refused.
* Dimension 0 of every activation is the batch: the Keras inputs take the input tensor's
  shape signature without it (`shape` when the file has no signature), so a file made with
  batch 1 gives a model for any batch.
* Only the ops the subgraph outputs depend on are rebuilt. RESHAPE's shape operand does not
  count as a dependency: a Keras model converted with a free batch computes it at run time
  (SHAPE, STRIDED_SLICE, PACK, GATHER, REDUCE_PROD, ...), and those ops are skipped; the
  target shape is read from the RESHAPE's output tensor instead (see RESHAPE).
* Layer names: the TFLite output tensor's name made safe (every run of characters other
  than letters, digits and '_' replaced by '_'). The converter joins the names of fused
  ops with ';': the first part that no earlier layer has taken is used, else the first
  part numbered _2, _3, ...; an extra layer an op needs (a Flatten before a Dense, a ReLU
  for a fused activation) gets that name plus a suffix. The Keras input is named the same
  way after the input tensor.

Ops (TFLite -> Keras)
* CONV_2D -> Conv2D. Filter [out, kh, kw, in] -> kernel [kh, kw, in, out]; bias as stored,
  none (use_bias=False) when the op has none; strides, SAME/VALID padding, dilation
  factors; a fused RELU / RELU6 becomes the layer's activation ('relu' / 'relu6'). Grouped
  convolutions (filter depth < input channels) and stride with dilation together (Keras
  has no such layer) are refused.
* DEPTHWISE_CONV_2D -> DepthwiseConv2D. Filter [1, kh, kw, in * m] -> kernel
  [kh, kw, in, m] (TFLite's output channel c * m + k is Keras' channel c, multiplier k);
  the depth multiplier m is out / in (the option is not trusted); the rest as CONV_2D.
* Dilated convolutions: the converter writes a Keras dilated convolution as
  SPACE_TO_BATCH_ND (block b, paddings P) -> CONV_2D / DEPTHWISE_CONV_2D (VALID, stride 1)
  -> BATCH_TO_SPACE_ND (block b, crops C), which is a VALID convolution with dilation b on
  the input padded by P, cropped by C. With C only at the end (C <= P there) it is one
  Conv2D / DepthwiseConv2D(dilation_rate=b) on the input padded by P - C: padding 'same'
  when that is TensorFlow's SAME padding, 'valid' when it is zero, else ZeroPadding2D in
  front. Those two ops anywhere else are refused.
* Bias after the op: the converter leaves the bias of a dilated convolution and of a Dense
  on a 4-D tensor as an ADD of one constant per channel after the pattern. When a
  CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED has no fused activation and no (or an
  all-zero) bias, and the only consumer of its result is such an ADD, the constant is the
  layer's bias and the ADD's fused activation its activation (the layer is named after
  the ADD's output): the same arithmetic, and the layer the Keras model had.
* FULLY_CONNECTED -> Dense (weights [out, in] -> kernel [in, out]; bias as CONV_2D; fused
  RELU / RELU6 as the activation). On a rank-2 input: Dense. On a higher-rank input:
  keep_num_dims with `in` = the last axis -> Dense on the last axis; otherwise `in` = all
  non-batch dimensions -> Flatten + Dense. Keras' Dense on a 4-D tensor (converted as
  RESHAPE to [-1, C] -> FULLY_CONNECTED -> RESHAPE back) is recognised as one Dense on the
  last axis. Shuffled weight formats are refused.
* ADD / SUB / MUL of two activations -> Add / Subtract / Multiply (Keras broadcasts like
  TFLite), a fused RELU / RELU6 as a ReLU layer after it. With one constant operand the op
  is an affine map a * x + b of the other one: MUL by c (a = c), ADD c (b = c), x - c
  (b = -c), c - x (a = -1, b = c). A scalar a and b -> Rescaling(scale=a, offset=b); a
  constant with one value per channel of the last axis (any leading dimensions of size 1)
  -> BatchNormalization used as a per-channel affine map (gamma = a, beta = b,
  moving_mean = 0, epsilon = 2**-10 and moving_variance = 1 - 2**-10, so that var + eps
  is exactly 1). A MUL by a constant whose only consumer adds or subtracts a constant
  (x * a + b, x * a - b: how the converter writes Rescaling and an unfolded BatchNorm) is
  one such layer, computed in the same order. Any other constant shape is refused.
* AVERAGE_POOL_2D / MAX_POOL_2D -> AveragePooling2D / MaxPooling2D (filter size, strides,
  padding; a fused activation as a ReLU layer).
* MEAN over axes 1 and 2 of a 4-D tensor -> GlobalAveragePooling2D(keepdims=keep_dims);
  other axes are refused.
* PAD with constant paddings on H and W only -> ZeroPadding2D(((top, bottom), (left,
  right))); padding the batch or channels is refused.
* RESHAPE / SQUEEZE -> Flatten for a rank-2 result, Reshape otherwise, nothing when the
  shape does not change. The target is the constant shape operand (or the options'
  new_shape), else the output tensor's shape signature; its first dimension must be the
  batch (-1 or 1) and a -1 elsewhere is resolved from the input's shape, except when the
  shape is computed at run time (then it is refused: it may move the batch).
* CONCATENATION -> Concatenate(axis) (not over the batch; constant operands refused).
* SOFTMAX -> Softmax() over the last axis, beta 1 only (another beta is refused rather
  than rebuilt as a rescaled softmax).
* RELU -> ReLU(), RELU6 -> ReLU(max_value=6), LOGISTIC -> Activation('sigmoid'), TANH ->
  Activation('tanh'), HARD_SWISH -> Activation('hard_silu') (Keras' name of hard swish,
  x * relu6(x + 3) / 6, as TFLite).
* DEQUANTIZE of a FLOAT16 constant: no layer, the float32 value is the constant.
* Fused activations RELU_N1_TO_1, TANH and SIGN_BIT are refused (no standard layer
  computes them in the place where quantflow expects them).

Any other op on the path to the outputs raises a QuantflowError, one line naming the file,
the op, its index in subgraph 0 and its output tensor's name, and the supported ops.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from quantflow.errors import QuantflowError

SUPPORTED_OPS = (
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "FULLY_CONNECTED",
    "ADD",
    "SUB",
    "MUL",
    "AVERAGE_POOL_2D",
    "MAX_POOL_2D",
    "MEAN",
    "PAD",
    "RESHAPE",
    "SQUEEZE",
    "CONCATENATION",
    "SOFTMAX",
    "RELU",
    "RELU6",
    "LOGISTIC",
    "TANH",
    "HARD_SWISH",
    "DEQUANTIZE",
    "SPACE_TO_BATCH_ND",
    "BATCH_TO_SPACE_ND",
)
_SUPPORTED_TEXT = (
    ", ".join(SUPPORTED_OPS[:-3])
    + ", DEQUANTIZE (of float16 constants), SPACE_TO_BATCH_ND + BATCH_TO_SPACE_ND (around a "
    "dilated convolution)"
)
_ACTIVATION_OPS = {
    "RELU": ("ReLU", {}),
    "RELU6": ("ReLU", {"max_value": 6.0}),
    "LOGISTIC": ("Activation", {"activation": "sigmoid"}),
    "TANH": ("Activation", {"activation": "tanh"}),
    "HARD_SWISH": ("Activation", {"activation": "hard_silu"}),
}
_NUMPY_TYPES = {
    "FLOAT32": "<f4",
    "FLOAT16": "<f2",
    "FLOAT64": "<f8",
    "INT32": "<i4",
    "INT64": "<i8",
    "INT16": "<i2",
    "INT8": "i1",
    "UINT8": "u1",
    "BOOL": "?",
}
_INTEGER_ACTIVATIONS = ("INT8", "UINT8", "INT16", "INT4", "UINT4", "INT2")
BN_EPSILON = 2.0**-10  # 1 - eps is exact in float32, so var + eps is exactly 1


def keras_from_tflite(path: str | Path):
    """The float TFLite model at `path` (fp32, or fp16 weights behind DEQUANTIZE) rebuilt as
    a Keras 3 functional model of standard layers with the file's weights (subgraph 0; the
    mapping and what is refused: see this module's doc). Raises QuantflowError, one line,
    for a missing or unreadable file, a quantized model, or an op or option the mapping
    does not cover (naming the op, its index and its output tensor)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    path = Path(path)
    if not path.is_file():
        raise QuantflowError(f"TFLite model {path} not found")
    try:
        model = flatbuffer_utils.read_model(str(path))
        if not model.subgraphs:
            raise ValueError("no subgraph")
    except Exception as e:  # flatbuffers raises many types for files that are not models
        raise QuantflowError(
            f"{path}: not a readable TFLite flatbuffer ({type(e).__name__}: {e})"
        ) from e
    return _Importer(model, path, schema, flatbuffer_utils).build()


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "tensor"


class _Importer:
    """One rebuild of subgraph 0 of `model` (a flatbuffer_utils ModelT)."""

    def __init__(self, model, path: Path, schema, flatbuffer_utils):
        import keras

        self.keras, self.layers = keras, keras.layers
        self.model, self.path, self.schema = model, path, schema
        self.sg = model.subgraphs[0]
        self.ops = list(self.sg.operators or [])
        self.op_names = [
            flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) or f"opcode {op.opcodeIndex}"
            for op in self.ops
        ]
        self.type_names = {v: k for k, v in vars(schema.TensorType).items() if k.isupper()}
        self.producer = {t: k for k, op in enumerate(self.ops) for t in op.outputs or []}
        self.outputs = list(self.sg.outputs or [])
        self.live = self._live_ops()
        self.consumers: dict[int, list[int]] = {}
        for k in sorted(self.live):
            for t in self.ops[k].inputs or []:
                if t >= 0 and k not in self.consumers.setdefault(t, []):
                    self.consumers[t].append(k)
        self.values: dict = {}  # tensor index -> Keras tensor
        self.constants: dict = {}
        self.done: set[int] = set()
        self.used_names: set[str] = set()

    # ---- the graph ------------------------------------------------------------------

    def _live_ops(self) -> set[int]:
        """The ops the subgraph outputs depend on (RESHAPE's shape operand not counted)."""
        needed, live = set(self.outputs), set()
        for k in reversed(range(len(self.ops))):
            op = self.ops[k]
            if any(t in needed for t in op.outputs or []):
                live.add(k)
                inputs = list(op.inputs or [])
                if self.op_names[k] == "RESHAPE":
                    inputs = inputs[:1]
                needed.update(t for t in inputs if t >= 0)
        return live

    def tensor(self, t: int):
        return self.sg.tensors[t]

    def name(self, t: int) -> str:
        return _text(self.tensor(t).name)

    def type_name(self, t: int) -> str:
        return self.type_names.get(self.tensor(t).type, str(self.tensor(t).type))

    def where(self, k: int) -> str:
        outputs = self.ops[k].outputs or []
        output = f", output '{self.name(outputs[0])}'" if outputs else ""
        return f"{self.path}: op {k} ({self.op_names[k]}{output})"

    def refuse(self, k: int, why: str):
        raise QuantflowError(f"{self.where(k)}: {why}")

    def only_consumer(self, t: int) -> int | None:
        """The one live op reading tensor `t`, when it is no subgraph output."""
        users = self.consumers.get(t, [])
        return users[0] if len(users) == 1 and t not in self.outputs else None

    def layer_name(self, t: int, suffix: str = "") -> str:
        """A unique layer name after tensor `t`: the first ';'-part of its name not yet
        taken, made safe, plus `suffix`; else the first part numbered _2, _3, ..."""
        parts = [_safe(part) + suffix for part in self.name(t).split(";") if part.strip()]
        parts = parts or [_safe("") + suffix]
        name = next((part for part in parts if part not in self.used_names), None)
        n = 1
        while name is None or name in self.used_names:
            n += 1
            name = f"{parts[0]}_{n}"
        self.used_names.add(name)
        return name

    def const(self, t: int) -> np.ndarray | None:
        """The value of a constant tensor (a FLOAT16 one behind DEQUANTIZE as float32), or
        None for an activation."""
        if t < 0:
            return None
        if t in self.constants:
            return self.constants[t]
        value = None
        tensor = self.tensor(t)
        buffer = self.model.buffers[tensor.buffer] if tensor.buffer else None
        data = None if buffer is None else buffer.data
        if data is not None and len(data):
            kind = self.type_name(t)
            if kind not in _NUMPY_TYPES or tensor.sparsity is not None:
                sparse = " sparse" if tensor.sparsity is not None else ""
                raise QuantflowError(
                    f"{self.path}: constant '{self.name(t)}' is a{sparse} {kind} tensor, "
                    "which the TFLite importer cannot read"
                )
            raw = np.frombuffer(np.asarray(data, dtype=np.uint8).tobytes(), _NUMPY_TYPES[kind])
            value = raw.reshape(
                [int(d) for d in (tensor.shape if tensor.shape is not None else [])]
            )
        elif t in self.producer and self.op_names[self.producer[t]] == "DEQUANTIZE":
            k = self.producer[t]
            source = self.ops[k].inputs[0]
            quantized = self.const(source)
            if quantized is not None:
                if self.type_name(source) != "FLOAT16":
                    self.refuse(
                        k,
                        f"dequantizes a {self.type_name(source)} constant (a weight-only "
                        "quantized model); only float16 weights are imported",
                    )
                value = quantized.astype(np.float32)
        self.constants[t] = value
        return value

    def weight(self, k: int, t: int, what: str) -> np.ndarray:
        value = self.const(t)
        if value is None:
            self.refuse(k, f"its {what} is not a constant")
        if value.dtype != np.float32:
            self.refuse(
                k,
                f"its {what} '{self.name(t)}' is {self.type_name(t)}; only float models "
                "(float32 weights, or float16 behind DEQUANTIZE) can be imported",
            )
        return value

    def _bias(self, k: int) -> np.ndarray | None:
        inputs = self.ops[k].inputs
        return self.weight(k, inputs[2], "bias") if len(inputs) > 2 and inputs[2] >= 0 else None

    def act(self, k: int, t: int):
        if t in self.values:
            return self.values[t]
        if self.const(t) is not None:
            self.refuse(k, f"operand '{self.name(t)}' is a constant, which this op cannot take")
        self.refuse(k, f"operand '{self.name(t)}' is not computed by any supported op")

    def options(self, k: int, cls_name: str):
        options = self.ops[k].builtinOptions
        cls = getattr(self.schema, cls_name)
        return options if isinstance(options, cls) else cls()

    # ---- the rebuild ----------------------------------------------------------------

    def build(self):
        keras = self.keras
        inputs = []
        for t in self.sg.inputs or []:
            if self.type_name(t) != "FLOAT32":
                raise QuantflowError(
                    f"{self.path}: input '{self.name(t)}' is {self.type_name(t)}; only float "
                    "models (float32 input, fp32 or fp16 weights) can be imported, convert the "
                    "float model instead of a quantized one"
                )
            shape = self._signature(t)[1:]
            x = keras.Input(
                shape=tuple(None if d < 0 else d for d in shape), name=self.layer_name(t)
            )
            self.values[t] = x
            inputs.append(x)
        for k in sorted(self.live):
            if k in self.done:
                continue
            name = self.op_names[k]
            out_types = [self.type_name(t) for t in self.ops[k].outputs or []]
            if name == "QUANTIZE" or any(kind in _INTEGER_ACTIVATIONS for kind in out_types):
                raise QuantflowError(
                    f"{self.where(k)} computes in {out_types[0] if out_types else 'integers'}: "
                    "only float models (fp32, or fp16 weights) can be imported, not a "
                    "quantized one"
                )
            if name not in SUPPORTED_OPS:
                raise QuantflowError(
                    f"{self.where(k)} is not supported by the TFLite importer; supported: "
                    f"{_SUPPORTED_TEXT}"
                )
            if name in _ACTIVATION_OPS:
                cls, kwargs = _ACTIVATION_OPS[name]
                self._unary(k, getattr(self.layers, cls)(**kwargs, name=self._out_name(k)))
            else:
                getattr(self, f"_op_{name.lower()}")(k)
        outputs = []
        for t in self.outputs:
            if t not in self.values:
                raise QuantflowError(
                    f"{self.path}: output '{self.name(t)}' is not computed by the rebuilt ops"
                )
            outputs.append(self.values[t])
        return keras.Model(
            inputs[0] if len(inputs) == 1 else inputs,
            outputs[0] if len(outputs) == 1 else outputs,
            name=_safe(self.path.stem),
        )

    def _signature(self, t: int) -> list[int]:
        tensor = self.tensor(t)
        sig = tensor.shapeSignature
        sig = sig if sig is not None and len(sig) else tensor.shape
        return [int(d) for d in (sig if sig is not None else [])]

    def _out(self, k: int) -> int:
        return self.ops[k].outputs[0]

    def _out_name(self, k: int, suffix: str = "") -> str:
        return self.layer_name(self._out(k), suffix)

    def _unary(self, k: int, layer):
        self.values[self._out(k)] = layer(self.act(k, self.ops[k].inputs[0]))

    def _fused(self, k: int, code: int) -> str:
        """A fused activation as a Keras activation name."""
        kinds = self.schema.ActivationFunctionType
        if code == kinds.NONE:
            return "linear"
        if code == kinds.RELU:
            return "relu"
        if code == kinds.RELU6:
            return "relu6"
        names = {v: n for n, v in vars(kinds).items() if n.isupper()}
        self.refuse(k, f"fused activation {names.get(code, code)} is not supported")

    def _then_fused(self, k: int, y, code: int, t: int):
        """`y` followed by the op's fused activation (a ReLU layer), stored as tensor `t`."""
        activation = self._fused(k, code)
        if activation != "linear":
            max_value = 6.0 if activation == "relu6" else None
            y = self.layers.ReLU(max_value=max_value, name=self.layer_name(t, f"_{activation}"))(y)
        self.values[t] = y

    def _padding(self, code: int) -> str:
        return "same" if code == self.schema.Padding.SAME else "valid"

    # ---- convolutions ---------------------------------------------------------------

    def _conv(self, k: int, x, out: int, *, padding: str, dilation=(1, 1), pad=None):
        """The Keras layer of CONV_2D / DEPTHWISE_CONV_2D op `k` on `x`, stored as `out` (or as
        the output of the bias ADD it absorbs)."""
        layers, op = self.layers, self.ops[k]
        depthwise = self.op_names[k] == "DEPTHWISE_CONV_2D"
        options = self.options(k, "DepthwiseConv2DOptionsT" if depthwise else "Conv2DOptionsT")
        filters = self.weight(k, op.inputs[1], "filter")
        strides = (options.strideH or 1, options.strideW or 1)
        if strides != (1, 1) and tuple(dilation) != (1, 1):
            self.refuse(k, "stride and dilation together have no Keras layer")
        units = filters.shape[0] if not depthwise else filters.shape[-1]
        bias, activation, out = self._bias_and_activation(k, out, units)
        channels = x.shape[-1]
        if pad is not None:
            x = layers.ZeroPadding2D(pad, name=self.layer_name(out, "_pad"))(x)
        common = {
            "strides": strides,
            "padding": padding,
            "dilation_rate": tuple(dilation),
            "activation": activation,
            "use_bias": bias is not None,
            "name": self.layer_name(out),
        }
        if depthwise:
            _, kh, kw, depth = filters.shape
            if channels is None or depth % channels:
                self.refuse(k, f"filter depth {depth} is no multiple of {channels} channels")
            layer = layers.DepthwiseConv2D((kh, kw), depth_multiplier=depth // channels, **common)
            kernel = filters[0].reshape(kh, kw, channels, depth // channels)
        else:
            units, kh, kw, depth = filters.shape
            if depth != channels:
                self.refuse(
                    k, f"grouped convolution (filter depth {depth}, {channels} input channels)"
                )
            layer = layers.Conv2D(units, (kh, kw), **common)
            kernel = filters.transpose(1, 2, 3, 0)
        y = layer(x)
        layer.set_weights([kernel] + ([bias] if bias is not None else []))
        self.values[out] = y

    def _bias_and_activation(self, k: int, out: int, units: int):
        """Bias and activation of weighted op `k`, and the tensor its layer computes: its
        own when it has an activation or a non-zero bias; else, when the only consumer of
        its result `out` adds one constant per output channel (the converter's BiasAdd
        after a dilated convolution or a Dense on a 4-D tensor), that ADD folded in as the
        bias, with the ADD's fused activation and output."""
        options = self.ops[k].builtinOptions
        code = getattr(options, "fusedActivationFunction", 0)
        bias = self._bias(k)
        after = self.only_consumer(out)
        if (
            code == self.schema.ActivationFunctionType.NONE
            and (bias is None or not bias.any())
            and after is not None
            and self.op_names[after] == "ADD"
        ):
            a, b = self.ops[after].inputs[:2]
            other = b if a == out else a
            c = self.const(other) if other != out else None
            if (
                c is not None
                and c.dtype == np.float32
                and c.ndim >= 1
                and c.shape[-1] == units
                and c.size == units
            ):
                self.done.add(after)
                add = self.options(after, "AddOptionsT")
                k, code, out = after, add.fusedActivationFunction, self._out(after)
                bias = c.reshape(units)
        return bias, self._fused(k, code), out

    def _plain_conv(self, k: int):
        depthwise = self.op_names[k] == "DEPTHWISE_CONV_2D"
        options = self.options(k, "DepthwiseConv2DOptionsT" if depthwise else "Conv2DOptionsT")
        dilation = (options.dilationHFactor or 1, options.dilationWFactor or 1)
        x = self.act(k, self.ops[k].inputs[0])
        self._conv(k, x, self._out(k), padding=self._padding(options.padding), dilation=dilation)

    _op_conv_2d = _plain_conv
    _op_depthwise_conv_2d = _plain_conv

    def _op_space_to_batch_nd(self, k: int):
        """SPACE_TO_BATCH_ND -> convolution -> BATCH_TO_SPACE_ND: one dilated convolution."""
        why = "is supported only around a VALID convolution of stride 1 (a dilated one)"
        op = self.ops[k]
        conv = self.only_consumer(op.outputs[0])
        if conv is None or self.op_names[conv] not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            self.refuse(k, why)
        depthwise = self.op_names[conv] == "DEPTHWISE_CONV_2D"
        options = self.options(conv, "DepthwiseConv2DOptionsT" if depthwise else "Conv2DOptionsT")
        back = self.only_consumer(self._out(conv))
        block = self.const(op.inputs[1])
        paddings = self.const(op.inputs[2])
        if (
            self.ops[conv].inputs[0] != op.outputs[0]
            or self._padding(options.padding) != "valid"
            or (options.strideH or 1, options.strideW or 1) != (1, 1)
            or (options.dilationHFactor or 1, options.dilationWFactor or 1) != (1, 1)
            or back is None
            or self.op_names[back] != "BATCH_TO_SPACE_ND"
            or block is None
            or paddings is None
            or block.shape != (2,)
        ):
            self.refuse(k, why)
        crops = self.const(self.ops[back].inputs[2])
        back_block = self.const(self.ops[back].inputs[1])
        if crops is None or back_block is None or not np.array_equal(block, back_block):
            self.refuse(back, "does not undo the SPACE_TO_BATCH_ND before the convolution")
        pad = np.asarray(paddings, dtype=np.int64).reshape(2, 2).copy()
        crops = np.asarray(crops, dtype=np.int64).reshape(2, 2)
        if crops[:, 0].any() or (crops[:, 1] > pad[:, 1]).any():
            self.refuse(back, "crops the start of the output, which has no Keras layer")
        pad[:, 1] -= crops[:, 1]
        filters = self.const(self.ops[conv].inputs[1])
        if filters is None:
            self.refuse(conv, "its filter is not a constant")
        dilation = tuple(int(b) for b in block)
        span = [dilation[i] * (filters.shape[1 + i] - 1) for i in range(2)]
        same = np.array([[s // 2, s - s // 2] for s in span])
        if not pad.any():
            padding, zero_pad = "valid", None
        elif np.array_equal(pad, same):
            padding, zero_pad = "same", None
        else:
            padding, zero_pad = "valid", tuple(tuple(int(v) for v in row) for row in pad)
        x = self.act(k, op.inputs[0])
        self._conv(conv, x, self._out(back), padding=padding, dilation=dilation, pad=zero_pad)
        self.done.update((conv, back))

    def _op_batch_to_space_nd(self, k: int):
        self.refuse(k, "is supported only after a SPACE_TO_BATCH_ND and a convolution")

    # ---- dense ------------------------------------------------------------------------

    def _dense(self, k: int, x, out: int, *, flatten: bool = False):
        layers, op = self.layers, self.ops[k]
        weights = self.weight(k, op.inputs[1], "weights")
        bias, activation, out = self._bias_and_activation(k, out, weights.shape[0])
        if flatten:
            x = layers.Flatten(name=self.layer_name(out, "_flatten"))(x)
        layer = layers.Dense(
            weights.shape[0],
            activation=activation,
            use_bias=bias is not None,
            name=self.layer_name(out),
        )
        y = layer(x)
        layer.set_weights([weights.T] + ([bias] if bias is not None else []))
        self.values[out] = y

    def _op_fully_connected(self, k: int):
        op = self.ops[k]
        options = self.options(k, "FullyConnectedOptionsT")
        if options.weightsFormat != 0:
            self.refuse(k, "shuffled weights format is not supported")
        x = self.act(k, op.inputs[0])
        weights = self.weight(k, op.inputs[1], "weights")
        if weights.ndim != 2:
            self.refuse(k, f"weights of shape {list(weights.shape)} are not [out, in]")
        size, dims = weights.shape[1], list(x.shape[1:])
        if len(dims) == 1 and dims[0] == size:
            return self._dense(k, x, self._out(k))
        if len(dims) > 1 and options.keepNumDims and dims[-1] == size:
            return self._dense(k, x, self._out(k))
        if len(dims) > 1 and not options.keepNumDims and None not in dims:
            if int(np.prod(dims)) == size:
                return self._dense(k, x, self._out(k), flatten=True)
        self.refuse(
            k,
            f"input of shape {[None] + dims} does not match weights [out, in] "
            f"{list(weights.shape)} (keep_num_dims {bool(options.keepNumDims)}): it would "
            "merge the batch with other dimensions",
        )

    def _dense_on_last_axis(self, k: int, x) -> bool:
        """RESHAPE k (to [-1, C]) -> FULLY_CONNECTED -> RESHAPE back: Keras' Dense on the
        last axis of a tensor of rank > 2. Rebuilt as that Dense when it is one."""
        fc = self.only_consumer(self._out(k))
        if len(x.shape) < 3 or fc is None or self.op_names[fc] != "FULLY_CONNECTED":
            return False
        weights = self.const(self.ops[fc].inputs[1])
        back = self.only_consumer(self._out(fc))
        if (
            self.ops[fc].inputs[0] != self._out(k)
            or weights is None
            or weights.ndim != 2
            or weights.shape[1] != x.shape[-1]
            or back is None
            or self.op_names[back] != "RESHAPE"
        ):
            return False
        if self._signature(self._out(back))[1:] != [*x.shape[1:-1], weights.shape[0]]:
            return False
        self._dense(fc, x, self._out(back))
        self.done.update((fc, back))
        return True

    # ---- element-wise -----------------------------------------------------------------

    def _binary(self, k: int):
        op, name = self.ops[k], self.op_names[k]
        options = self.options(
            k, {"ADD": "AddOptionsT", "SUB": "SubOptionsT"}.get(name, "MulOptionsT")
        )
        a, b = op.inputs[:2]
        ca, cb = self.const(a), self.const(b)
        if ca is not None and cb is not None:
            self.refuse(k, "both operands are constants")
        if ca is None and cb is None:
            cls = {"ADD": "Add", "SUB": "Subtract", "MUL": "Multiply"}[name]
            y = getattr(self.layers, cls)(name=self._out_name(k))([self.act(k, a), self.act(k, b)])
            return self._then_fused(k, y, options.fusedActivationFunction, self._out(k))
        x_t, c = (b, ca) if ca is not None else (a, cb)
        x = self.act(k, x_t)
        c = self._affine_constant(k, c, x)
        if name == "MUL":
            scale, offset = c, 0.0
        elif name == "ADD":
            scale, offset = 1.0, c
        elif cb is not None:  # x - c
            scale, offset = 1.0, -c
        else:  # c - x
            scale, offset = -1.0, c
        last, code = k, options.fusedActivationFunction
        after = self.only_consumer(self._out(k))
        if (
            name == "MUL"
            and code == self.schema.ActivationFunctionType.NONE
            and after is not None
            and self.op_names[after] in ("ADD", "SUB")
        ):
            a2, b2 = self.ops[after].inputs[:2]
            c2 = self.const(b2) if a2 == self._out(k) else None
            if self.op_names[after] == "ADD" and c2 is None and b2 == self._out(k):
                c2 = self.const(a2)
            if c2 is not None:
                c2 = self._affine_constant(after, c2, x)
                offset = c2 if self.op_names[after] == "ADD" else -c2
                last = after
                after_options = self.options(
                    after, "AddOptionsT" if self.op_names[after] == "ADD" else "SubOptionsT"
                )
                code = after_options.fusedActivationFunction
                self.done.add(after)
        out = self._out(last)
        if np.ndim(scale) == 0 and np.ndim(offset) == 0:
            layer = self.layers.Rescaling(
                scale=float(scale), offset=float(offset), name=self.layer_name(out)
            )
            y = layer(x)
        else:
            channels = x.shape[-1]
            layer = self.layers.BatchNormalization(epsilon=BN_EPSILON, name=self.layer_name(out))
            y = layer(x)
            layer.set_weights(
                [
                    np.broadcast_to(np.float32(scale), (channels,)).astype(np.float32),
                    np.broadcast_to(np.float32(offset), (channels,)).astype(np.float32),
                    np.zeros(channels, np.float32),
                    np.full(channels, 1.0 - BN_EPSILON, np.float32),
                ]
            )
        self._then_fused(last, y, code, out)

    _op_add = _binary
    _op_sub = _binary
    _op_mul = _binary

    def _affine_constant(self, k: int, c: np.ndarray, x):
        """A constant operand as a float32 scalar or a per-channel vector (last axis)."""
        if c.dtype != np.float32:
            self.refuse(k, f"constant operand of type {c.dtype} is not float32")
        rank, channels = len(x.shape), x.shape[-1]
        if c.size == 1 and c.ndim <= rank:
            return np.float32(c.reshape(()))
        if 1 <= c.ndim <= rank and c.shape[-1] == channels and c.size == channels:
            return c.reshape(channels).astype(np.float32)
        self.refuse(
            k,
            f"constant operand of shape {list(c.shape)} is neither a scalar nor one value per "
            f"channel of the input (shape {list(x.shape)})",
        )

    # ---- pooling, padding, shapes -----------------------------------------------------

    def _pool(self, k: int):
        options = self.options(k, "Pool2DOptionsT")
        cls = "AveragePooling2D" if self.op_names[k] == "AVERAGE_POOL_2D" else "MaxPooling2D"
        layer = getattr(self.layers, cls)(
            pool_size=(options.filterHeight, options.filterWidth),
            strides=(options.strideH or 1, options.strideW or 1),
            padding=self._padding(options.padding),
            name=self._out_name(k),
        )
        y = layer(self.act(k, self.ops[k].inputs[0]))
        self._then_fused(k, y, options.fusedActivationFunction, self._out(k))

    _op_average_pool_2d = _pool
    _op_max_pool_2d = _pool

    def _op_mean(self, k: int):
        op = self.ops[k]
        x = self.act(k, op.inputs[0])
        axes = self.const(op.inputs[1])
        rank = len(x.shape)
        if axes is None:
            self.refuse(k, "its axes are not a constant")
        axes = sorted({int(a) % rank for a in np.ravel(axes)})
        if rank != 4 or axes != [1, 2]:
            self.refuse(
                k, f"a mean over axes {axes} of a rank-{rank} tensor (only H and W, 1 and 2)"
            )
        keep = bool(self.options(k, "ReducerOptionsT").keepDims)
        y = self.layers.GlobalAveragePooling2D(keepdims=keep, name=self._out_name(k))(x)
        self.values[self._out(k)] = y

    def _op_pad(self, k: int):
        op = self.ops[k]
        x = self.act(k, op.inputs[0])
        paddings = self.const(op.inputs[1])
        if paddings is None or len(x.shape) != 4 or np.shape(paddings) != (4, 2):
            self.refuse(k, "only constant paddings of a 4-D (NHWC) tensor are supported")
        paddings = np.asarray(paddings, dtype=np.int64)
        if paddings[0].any() or paddings[3].any():
            self.refuse(k, "pads the batch or the channels; only H and W can be padded")
        pad = tuple(tuple(int(v) for v in paddings[i]) for i in (1, 2))
        self.values[self._out(k)] = self.layers.ZeroPadding2D(pad, name=self._out_name(k))(x)

    def _reshape_to(self, k: int, x, dims: list[int], computed: bool):
        """Reshape `x` to batch + `dims` (one -1 allowed unless the shape is `computed` at
        run time), as Flatten / Reshape / nothing."""
        source = list(x.shape[1:])
        known = None not in source
        if dims.count(-1) > 1 or (-1 in dims and (computed or not known)):
            self.refuse(k, f"target shape {dims} (after the batch) is not known before run time")
        if -1 in dims:
            rest = int(np.prod([d for d in dims if d != -1]))
            if rest == 0 or int(np.prod(source)) % rest:
                self.refuse(k, f"cannot reshape {source} to {dims}")
            dims = [int(np.prod(source)) // rest if d == -1 else d for d in dims]
        if known and int(np.prod(source)) != int(np.prod(dims)):
            self.refuse(k, f"reshapes {source} to {dims}: it would change the batch")
        if dims == source:
            self.values[self._out(k)] = x
        elif len(dims) == 1 and len(source) > 1:
            self.values[self._out(k)] = self.layers.Flatten(name=self._out_name(k))(x)
        else:
            layer = self.layers.Reshape(tuple(dims), name=self._out_name(k))
            self.values[self._out(k)] = layer(x)

    def _op_reshape(self, k: int):
        op = self.ops[k]
        x = self.act(k, op.inputs[0])
        if self._dense_on_last_axis(k, x):
            return
        shape = self.const(op.inputs[1]) if len(op.inputs) > 1 else None
        computed = False
        if shape is None:
            new_shape = self.options(k, "ReshapeOptionsT").newShape
            if new_shape is not None and len(op.inputs) < 2:
                shape = np.asarray(new_shape)
        if shape is None:  # computed at run time (free batch): the output's signature
            shape, computed = np.asarray(self._signature(self._out(k))), True
        dims = [int(d) for d in np.ravel(shape)]
        if not dims or dims[0] not in (-1, 1):
            self.refuse(k, f"target shape {dims} does not keep the batch first")
        self._reshape_to(k, x, dims[1:], computed)

    def _op_squeeze(self, k: int):
        x = self.act(k, self.ops[k].inputs[0])
        rank = len(x.shape)
        squeeze = self.options(k, "SqueezeOptionsT").squeezeDims
        if squeeze is None or len(squeeze) == 0:
            squeeze = [i for i in range(1, rank) if x.shape[i] == 1]
        squeeze = {int(d) % rank for d in squeeze}
        if 0 in squeeze:
            self.refuse(k, "squeezes the batch dimension")
        dims = [d for i, d in enumerate(x.shape) if i and i not in squeeze]
        if None in dims:
            self.refuse(k, f"squeezes a tensor of unknown shape {list(x.shape)}")
        self._reshape_to(k, x, dims, False)

    def _op_concatenation(self, k: int):
        op = self.ops[k]
        options = self.options(k, "ConcatenationOptionsT")
        xs = [self.act(k, t) for t in op.inputs]
        rank = len(xs[0].shape)
        axis = int(options.axis) % rank
        if axis == 0:
            self.refuse(k, "concatenates along the batch")
        if len(xs) == 1:
            y = xs[0]
        else:
            y = self.layers.Concatenate(axis=axis, name=self._out_name(k))(xs)
        self._then_fused(k, y, options.fusedActivationFunction, self._out(k))

    def _op_softmax(self, k: int):
        beta = float(self.options(k, "SoftmaxOptionsT").beta)
        if beta != 1.0:
            self.refuse(k, f"softmax beta {beta:g}: only beta 1 is supported")
        self._unary(k, self.layers.Softmax(axis=-1, name=self._out_name(k)))

    def _op_dequantize(self, k: int):
        if self.const(self._out(k)) is None:
            self.refuse(k, "dequantizes an activation; only constant float16 weights are imported")
