"""Float .tflite models rebuilt as Keras functional models (quantflow.models.tflite_import):
Keras models converted with quantflow's own converter (fp32 and fp16), rebuilt with
`keras_from_tflite`, must give LiteRT's outputs (max |diff| <= 1e-4 * max |output|), be made
of standard Keras layers only and go through the fake-quant transform; an unsupported op
and a quantized model are refused with one line that names them."""

import re

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

from quantflow.deploy.convert import convert, save, tensor_types  # noqa: E402
from quantflow.deploy.litert import TFLiteRunner  # noqa: E402
from quantflow.errors import QuantflowError  # noqa: E402
from quantflow.models.tflite_import import SUPPORTED_OPS, keras_from_tflite  # noqa: E402
from quantflow.quant.transform import fake_quant_model  # noqa: E402

SIZE = 32
TOLERANCE = 1e-4  # of the largest output magnitude
# what a Keras model with a free batch computes RESHAPE's target with (skipped on import)
SHAPE_ARITHMETIC = {"SHAPE", "STRIDED_SLICE", "PACK", "GATHER", "REDUCE_PROD"}
STANDARD_LAYERS = (
    layers.InputLayer,
    layers.Conv2D,
    layers.DepthwiseConv2D,
    layers.Dense,
    layers.Add,
    layers.Subtract,
    layers.Multiply,
    layers.AveragePooling2D,
    layers.MaxPooling2D,
    layers.GlobalAveragePooling2D,
    layers.ZeroPadding2D,
    layers.Reshape,
    layers.Flatten,
    layers.Concatenate,
    layers.Softmax,
    layers.ReLU,
    layers.Activation,
    layers.Rescaling,
    layers.BatchNormalization,
)


def randomize(model, seed: int):
    """Biases and BatchNorm statistics away from their initial zeros and ones, so that no
    constant is trivial (a zero bias or BatchNorm offset is dropped by the converter)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if isinstance(layer, layers.BatchNormalization):  # gamma, beta, mean, variance
            c = weights[0].shape
            weights = [
                rng.uniform(0.5, 1.5, c),
                rng.normal(0, 0.2, c),
                rng.normal(0, 0.2, c),
                rng.uniform(0.5, 1.5, c),
            ]
        elif len(weights) == 2:  # kernel, bias
            weights[1] = rng.normal(0, 0.2, weights[1].shape)
        layer.set_weights([np.asarray(w, np.float32) for w in weights])
    return model


def every_op_model():
    """A small model whose fp32 conversion uses every op the importer supports."""
    channels = np.array([0.5, -1.0, 2.0, 1.5, 0.25, -0.75, 1.0, 3.0], np.float32)
    image = keras.Input((SIZE, SIZE, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1)(image)  # MUL + ADD by scalars
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu6")(x)  # SAME, RELU6
    x = layers.BatchNormalization()(x)  # per-channel MUL + ADD (not folded after a ReLU6)
    a = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(x)
    b = layers.Conv2D(16, 3, dilation_rate=2, padding="same")(x)  # SPACE_TO_BATCH_ND ...
    s = layers.Add()([a, b])
    d = layers.Subtract()([a, b])
    p = layers.Activation("hard_swish")(layers.Multiply()([s, d]))
    q = layers.Activation("sigmoid")(s)
    r = layers.Activation("tanh")(d)
    c = layers.Concatenate()([p, q, r])
    c = layers.ZeroPadding2D(((1, 0), (0, 1)))(c)  # PAD
    c = layers.Conv2D(8, 3, padding="valid", activation="relu")(c)  # 15x15, RELU fused
    v = layers.DepthwiseConv2D(3, dilation_rate=(2, 3), activation="relu6")(x)  # RELU6 op
    v = layers.ReLU()(layers.Rescaling(scale=channels)(v))  # MUL by a vector, then RELU
    w = layers.Rescaling(1.0, offset=channels)(c)  # ADD a vector
    w = keras.ops.subtract(w, channels[::-1].copy())  # SUB a vector
    w = layers.Add()([layers.Rescaling(0.5)(w), keras.ops.subtract(3.0, w)])  # MUL, c - x
    w = layers.ReLU()(layers.Rescaling(1.0, offset=0.25)(w))  # ADD a scalar, then RELU
    m = layers.MaxPooling2D(2)(w)
    m = layers.AveragePooling2D(3, strides=2, padding="same")(m)  # 4x4
    m = layers.Dense(5)(m)  # a Dense on a 4-D tensor: RESHAPE, FULLY_CONNECTED, RESHAPE
    g = layers.GlobalAveragePooling2D(keepdims=True)(v)  # MEAN, keep_dims
    g = layers.ReLU()(layers.Flatten()(g))  # RESHAPE, RELU (nothing to fuse it into)
    f = layers.Dense(32, activation="relu6")(layers.Flatten()(m))  # RESHAPE, FC + RELU6
    f = layers.ReLU(max_value=6.0)(layers.Reshape((4, 4, 2))(f))  # RESHAPE, RELU6
    f = layers.GlobalAveragePooling2D()(f)  # MEAN
    y = layers.Concatenate()([f, g, layers.GlobalAveragePooling2D()(b)])
    return keras.Model(image, layers.Softmax()(layers.Dense(10)(y)))


def imported(model, fmt: str, path):
    """The `fmt` conversion of `model` written to `path`, its ops and the rebuilt model."""
    save(convert(model, fmt), path)
    return tensor_types(str(path))["ops"], keras_from_tflite(path)


def compare(path, rebuilt, images) -> tuple[float, float]:
    """The largest |difference| of LiteRT's and the rebuilt model's outputs, absolute and
    relative to the largest |output|."""
    runner = TFLiteRunner(path, 1)
    expected = runner.scores(runner.run(runner.prepare(images)))
    got = np.asarray(rebuilt(images, training=False))
    diff = float(np.abs(expected - got).max())
    relative = diff / float(np.abs(expected).max())
    print(f"{path.name}: max |diff| {diff:.3g}, relative {relative:.3g}")
    return diff, relative


def check_layers(rebuilt):
    names = [layer.name for layer in rebuilt.layers]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", name) for name in names)
    odd = [type(layer).__name__ for layer in rebuilt.layers if type(layer) not in STANDARD_LAYERS]
    assert not odd, f"layers other than standard ones: {odd}"


@pytest.fixture(scope="module")
def every_op(tmp_path_factory):
    keras.utils.set_random_seed(1)
    return randomize(every_op_model(), seed=1), tmp_path_factory.mktemp("tflite_import")


def test_every_supported_op_fp32(every_op):
    model, work = every_op
    ops, rebuilt = imported(model, "fp32", work / "every_op.tflite")
    expected = set(SUPPORTED_OPS) - {"DEQUANTIZE", "SQUEEZE"}  # SQUEEZE: see below
    assert expected <= set(ops) <= expected | SHAPE_ARITHMETIC, f"the converter's ops: {ops}"
    images = np.random.default_rng(0).uniform(0, 255, (8, SIZE, SIZE, 3)).astype(np.float32)
    _, relative = compare(work / "every_op.tflite", rebuilt, images)
    assert relative <= TOLERANCE
    check_layers(rebuilt)
    kinds = {type(layer).__name__ for layer in rebuilt.layers}
    assert {"BatchNormalization", "Rescaling", "ZeroPadding2D", "Flatten", "Reshape"} <= kinds
    dilated = [layer for layer in rebuilt.layers if max(getattr(layer, "dilation_rate", [1])) > 1]
    assert {tuple(layer.dilation_rate) for layer in dilated} == {(2, 2), (2, 3)}
    multiplied = [layer for layer in rebuilt.layers if getattr(layer, "depth_multiplier", 1) > 1]
    assert [layer.depth_multiplier for layer in multiplied] == [2]
    # names come from the file's tensors: the dilated Conv2D is named after its output
    assert any("conv2d" in layer.name and layer in dilated for layer in rebuilt.layers)


def test_every_supported_op_fp16(every_op):
    model, work = every_op
    ops, rebuilt = imported(model, "fp16", work / "every_op_fp16.tflite")
    assert "DEQUANTIZE" in ops
    images = np.random.default_rng(1).uniform(0, 255, (8, SIZE, SIZE, 3)).astype(np.float32)
    _, relative = compare(work / "every_op_fp16.tflite", rebuilt, images)
    assert relative <= TOLERANCE
    check_layers(rebuilt)


def test_mobilenet_v2_rebuilt_and_fake_quantized(tmp_path):
    keras.utils.set_random_seed(2)
    model = keras.applications.MobileNetV2(
        alpha=0.35,
        input_shape=(SIZE, SIZE, 3),
        weights=None,
        classes=10,
        classifier_activation=None,  # logits, a stricter comparison than probabilities
    )
    randomize(model, seed=2)
    _, rebuilt = imported(model, "fp32", tmp_path / "mobilenet_v2.tflite")
    images = np.random.default_rng(2).uniform(-1, 1, (8, SIZE, SIZE, 3)).astype(np.float32)
    _, relative = compare(tmp_path / "mobilenet_v2.tflite", rebuilt, images)
    assert relative <= TOLERANCE
    check_layers(rebuilt)
    assert not any(isinstance(layer, layers.Lambda) for layer in rebuilt.layers)
    qmodel = fake_quant_model(rebuilt)
    assert qmodel(images[:2]).shape == (2, 10)


def test_unsupported_op_is_named_with_its_index(tmp_path):
    from ai_edge_litert.tools import flatbuffer_utils

    image = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, activation="relu")(image)
    x = keras.ops.cumsum(x, axis=-1)
    model = keras.Model(image, layers.Dense(3)(layers.GlobalAveragePooling2D()(x)))
    path = tmp_path / "cumsum.tflite"
    save(convert(model, "fp32"), path)
    flat = flatbuffer_utils.read_model(str(path))
    graph = flat.subgraphs[0]
    names = [flatbuffer_utils.opcode_to_name(flat, op.opcodeIndex) for op in graph.operators]
    index = names.index("CUMSUM")
    output = graph.tensors[graph.operators[index].outputs[0]].name.decode()
    with pytest.raises(QuantflowError) as error:
        keras_from_tflite(path)
    message = str(error.value)
    assert "\n" not in message
    assert f"op {index} (CUMSUM, output '{output}') is not supported" in message
    assert str(path) in message and "supported: CONV_2D" in message


def edited(model, path, edit):
    """The fp32 conversion of `model`, changed by `edit(flat_model, op_names)` with
    LiteRT's flatbuffer_utils and written to `path` (ops the converter does not write)."""
    from ai_edge_litert.tools import flatbuffer_utils

    save(convert(model, "fp32"), path)
    flat = flatbuffer_utils.read_model(str(path))
    ops = flat.subgraphs[0].operators
    edit(flat, [flatbuffer_utils.opcode_to_name(flat, op.opcodeIndex) for op in ops])
    flatbuffer_utils.write_model(flat, str(path))
    return path


def test_squeeze(tmp_path):
    """The converter writes a squeeze as RESHAPE: one rewritten as SQUEEZE(1, 2)."""
    from ai_edge_litert import schema_py_generated as schema

    def to_squeeze(flat, names):
        graph = flat.subgraphs[0]
        k = next(
            i
            for i, op in enumerate(graph.operators)
            if names[i] == "RESHAPE" and list(graph.tensors[op.inputs[0]].shape) == [1, 1, 1, 4]
        )
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.SQUEEZE
        flat.operatorCodes.append(code)
        op = graph.operators[k]
        op.opcodeIndex, op.inputs = len(flat.operatorCodes) - 1, op.inputs[:1]
        op.builtinOptionsType = schema.BuiltinOptions.SqueezeOptions
        op.builtinOptions = schema.SqueezeOptionsT()
        op.builtinOptions.squeezeDims = [1, 2]

    keras.utils.set_random_seed(3)
    image = keras.Input((8, 8, 3))
    x = layers.GlobalAveragePooling2D(keepdims=True)(layers.Conv2D(4, 3)(image))
    model = keras.Model(image, layers.Dense(3)(layers.Flatten()(x)))
    path = edited(randomize(model, seed=3), tmp_path / "squeeze.tflite", to_squeeze)
    assert "SQUEEZE" in tensor_types(str(path))["ops"]
    rebuilt = keras_from_tflite(path)
    images = np.random.default_rng(3).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    _, relative = compare(path, rebuilt, images)
    assert relative <= TOLERANCE
    assert [type(layer).__name__ for layer in rebuilt.layers][-2:] == ["Flatten", "Dense"]


def test_softmax_beta_other_than_one_is_refused(tmp_path):
    def beta(flat, names):
        flat.subgraphs[0].operators[names.index("SOFTMAX")].builtinOptions.beta = 0.5

    image = keras.Input((4,))
    model = keras.Model(image, layers.Softmax()(layers.Dense(3)(image)))
    path = edited(model, tmp_path / "beta.tflite", beta)
    with pytest.raises(QuantflowError, match=r"\(SOFTMAX, output .*beta 0.5: only beta 1"):
        keras_from_tflite(path)


def test_quantized_model_is_refused(tmp_path):
    image = keras.Input((8, 8, 3))
    model = keras.Model(image, layers.Dense(3)(layers.GlobalAveragePooling2D()(image)))
    images = np.random.default_rng(3).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    path = tmp_path / "int8.tflite"
    save(convert(model, "int8", images), path)
    with pytest.raises(QuantflowError, match="only float models"):
        keras_from_tflite(path)


def test_missing_file(tmp_path):
    with pytest.raises(QuantflowError, match="not found"):
        keras_from_tflite(tmp_path / "absent.tflite")
