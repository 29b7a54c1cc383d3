"""The TFLite-manner fake-quant transform (quantflow.quant.transform) on tiny models: BN folding,
activation fusion, nested models, int8 TFLite agreement and clear errors."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

from quantflow.quant.layers import QDepthwiseConv2D  # noqa: E402
from quantflow.quant.transform import fake_quant_model  # noqa: E402
from quantflow.quant.layers import QuantizedOp as _QuantizedOp  # noqa: E402
from quantflow.quant.calibrate import (
    alpha_bounds,
    alpha_variables,
    calibrate,
    clip_alphas,
    thresholds,
)  # noqa: E402
from quantflow.errors import QuantflowError  # noqa: E402
from quantflow.deploy.litert import TFLiteRunner  # noqa: E402
from quantflow.models.tiny_mobilenet import tiny_mobilenet  # noqa: E402
from quantflow.deploy.convert import convert, tensor_types  # noqa: E402

SIZE, CLASSES = 16, 4


def synthetic_images(n: int, channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer pixels in [0, 255]: horizontal, vertical or diagonal stripes (random period,
    phase and contrast) or none (the four labels), plus noise; learnable in a few epochs, so
    the logits have clear margins."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    coords = np.stack([yy, xx, yy + xx, np.zeros_like(yy)])[labels]
    period = rng.uniform(3, 6, (n, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    contrast = rng.uniform(40, 90, (n, 1, 1)) * (labels < 3)[:, None, None]
    x = 128 + contrast * np.sin(2 * np.pi * coords / period + phase)
    x = x[..., None] + rng.normal(0, 20, (n, SIZE, SIZE, channels))
    return np.clip(np.round(x), 0, 255).astype(np.float32), labels


def wrapped_model():
    """A nested backbone (layers the tests look up are named: auto names depend on what
    the process built before) (swish, SE with sigmoid + Multiply, Add residual + ReLU6,
    Concatenate, ZeroPadding + MaxPooling) inside a wrapper with Rescaling and Dropout."""
    bn = {"momentum": 0.9}
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization(**bn)(x)
    x = layers.Activation("swish", name="swish")(x)
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization(**bn)(y)
    y = layers.ReLU()(y)
    s = layers.GlobalAveragePooling2D(keepdims=True)(y)
    s = layers.Conv2D(4, 1, activation="relu")(s)
    s = layers.Conv2D(16, 1, activation="sigmoid", name="se_expand")(s)
    y = layers.Multiply(name="se_scale")([y, s])
    y = layers.Conv2D(16, 1, use_bias=False)(y)
    y = layers.BatchNormalization(**bn)(y)
    y = layers.Add(name="residual")([x, y])
    y = layers.ReLU(6.0, name="residual_relu6")(y)
    z = layers.Conv2D(8, 1, activation="relu")(x)
    c = layers.Concatenate(name="concat")([y, z])
    c = layers.ZeroPadding2D(1, name="pad")(c)
    c = layers.MaxPooling2D(2, name="pool")(c)
    features = layers.GlobalAveragePooling2D()(c)
    backbone = keras.Model(inputs, features, name="backbone")

    image = keras.Input((SIZE, SIZE, 3), name="image")
    h = layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(image)
    h = backbone(h)
    h = layers.Dropout(0.1, name="head_dropout")(h)
    return keras.Model(image, layers.Dense(CLASSES, name="logits")(h), name="wrapped")


def _trained(model, channels: int, epochs: int):
    x, y = synthetic_images(1024, channels, seed=0)
    model.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    test, labels = synthetic_images(200, channels, seed=1)
    return {"model": model, "train": x, "test": test, "labels": labels}


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    return _trained(tiny_mobilenet((SIZE, SIZE, 1), CLASSES, width=0.25, head=32), 1, 4)


@pytest.fixture(scope="module")
def wrapped():
    keras.utils.set_random_seed(1)
    return _trained(wrapped_model(), 3, 3)


@pytest.mark.parametrize("case", ["tiny", "wrapped"])
def test_16_bit_fake_quant_matches_float(case, request):
    """With 16 bits the quantization is negligible: what is left is BN folding, fusion and
    graph rebuilding, which must reproduce the float model."""
    data = request.getfixturevalue(case)
    model, x = data["model"], data["test"]
    qmodel = fake_quant_model(model, weight_bits=16, activation_bits=16)
    calibrate(qmodel, x)  # the evaluated images themselves: no clipping
    expected, got = np.asarray(model(x, training=False)), np.asarray(qmodel(x, training=False))
    assert np.abs(got - expected).max() < 2e-3 * np.abs(expected).max()
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.99


def test_tiny_mobilenet_graph_is_folded_and_fused(tiny):
    qmodel = fake_quant_model(tiny["model"])
    kinds = {type(layer).__name__ for layer in qmodel.layers}
    assert not kinds & {"BatchNormalization", "ReLU", "Dropout"}
    quantized = {l.name: l for l in qmodel.layers if isinstance(l, _QuantizedOp)}
    assert quantized["stem_conv"].activation == "relu6"
    assert isinstance(quantized["block1_dw"], QDepthwiseConv2D)
    assert quantized["logits"].activation == "linear"
    assert qmodel.get_layer("image_quant").fixed_range == (0.0, 255.0)
    assert qmodel.get_layer("rescale_quant").fixed_range == pytest.approx((0.0, 1.0))
    assert qmodel.get_layer("stem_conv_quant").signed is False  # after ReLU6
    assert qmodel.get_layer("logits_quant").signed is True
    assert {v.path for v in qmodel.trainable_variables} == {v.path for v in alpha_variables(qmodel)}


def test_wrapped_model_is_flattened(wrapped):
    qmodel = fake_quant_model(wrapped["model"])
    names = [layer.name for layer in qmodel.layers]
    assert "backbone" not in names and not any(isinstance(l, keras.Model) for l in qmodel.layers)
    assert qmodel.get_layer("preprocess_mul_quant").fixed_range == pytest.approx((0.0, 2.0))
    lo, hi = qmodel.get_layer("preprocess_quant").fixed_range  # [-1, 1], off the ties
    assert -1.02 < lo < -1.0 and 1.0 < hi < 1.02
    assert "residual_quant" not in names and "residual_relu6" in names  # ReLU6 fused into ADD
    assert "residual_relu6_quant" not in names  # quantized by the Concatenate, as in TFLite
    assert "pad_quant" not in names and "pool_quant" not in names
    assert {"swish_sigmoid_quant", "swish_quant", "se_scale_quant", "concat_quant"} <= set(names)
    assert qmodel.get_layer("se_expand_sigmoid_quant").fixed_range == (0.0, 255 / 256)
    assert "se_expand_linear_quant" in names  # sigmoid is its own int8 op


def _fully_int8(tflite: bytes) -> None:
    from ai_edge_litert.interpreter import Interpreter

    types = tensor_types(tflite)
    assert types["input"] == "int8" and types["output"] == "int8", types
    assert "DEQUANTIZE" not in types["ops"], types
    dtypes = {
        np.dtype(t["dtype"]).name for t in Interpreter(model_content=tflite).get_tensor_details()
    }
    assert dtypes <= {"int8", "int32"}, dtypes  # int32: biases


@pytest.mark.parametrize("case", ["tiny", "wrapped"])
def test_int8_tflite_agrees_with_fake_quant(case, request, tmp_path):
    data = request.getfixturevalue(case)
    qmodel = fake_quant_model(data["model"])
    calibrate(qmodel, data["train"], 8)
    tflite = convert(qmodel, "int8", data["train"][:32])
    _fully_int8(tflite)
    path = tmp_path / "model.tflite"
    path.write_bytes(tflite)
    runner = TFLiteRunner(path)
    assert runner.input["quantization"] == (1.0, -128)  # integer pixels are exact
    scores = runner.scores(runner.run(runner.prepare(data["test"])))
    fake = np.asarray(qmodel(data["test"], training=False))
    from quantflow.deploy.check import agreement, check_activation_grids

    fit = agreement(fake, scores, runner.output["quantization"][0])
    print(f"{case}: int8 TFLite vs fake-quant {fit}")
    assert fit["top1_agreement"] >= 0.995
    assert fit["top1_agreement_clear_margin"] in (None, 1.0)
    assert fit["mean_abs_logit_difference_steps"] <= 0.5
    assert check_activation_grids(qmodel, tflite) == []
    # the TFLite output grid is the logits quantizer's range
    lo, hi = (float(v) for v in qmodel.get_layer("logits_quant").quant_range())
    scale, _ = runner.output["quantization"]
    assert scale == pytest.approx((hi - lo) / 255, rel=1e-5)


def test_asymmetric_per_tensor_variant(tiny):
    model, x = tiny["model"], tiny["test"]
    qmodel = fake_quant_model(
        model, symmetric=False, per_channel=False, weight_bits=16, activation_bits=16
    )
    info = calibrate(qmodel, x, method="percentile", percentile=100.0, batch_size=len(x))
    assert info["stem_conv/kernel"]["per_channel"] is False
    assert np.ndim(info["stem_conv/kernel"]["t_max"]) == 0
    logits = info["logits_quant"]
    assert logits["range"][0] <= 0.0 <= logits["range"][1] and "alpha_r" in logits
    expected, got = np.asarray(model(x, training=False)), np.asarray(qmodel(x, training=False))
    assert np.abs(got - expected).max() < 5e-3 * np.abs(expected).max()


def test_thresholds_report_and_bounds(tiny):
    qmodel = fake_quant_model(tiny["model"])
    info = calibrate(qmodel, tiny["train"], 2, method="percentile", percentile=99.0)
    head = info["head/kernel"]
    assert len(head["t_max"]) == 8 and head["alpha"] == [1.0] * 8
    kernel = np.asarray(qmodel.get_layer("head").kernel)
    assert head["t_max"] == pytest.approx(np.abs(kernel).max(axis=0), rel=1e-6)
    pool = info["pool_quant"]
    assert pool["signed"] is False and pool["range"] == pytest.approx([0.0, pool["t_max"]])
    for variable, low, high in alpha_bounds(qmodel):
        variable.assign(np.full(variable.shape, 3.0, np.float32))
    clip_alphas(qmodel)
    assert all(np.all(np.asarray(v) == 1.0) for v in alpha_variables(qmodel))
    assert thresholds(qmodel)["pool_quant"]["alpha"] == 1.0


def test_saved_fake_quant_model_reloads(tiny, tmp_path):
    qmodel = fake_quant_model(tiny["model"])
    calibrate(qmodel, tiny["train"], 2)
    qmodel.get_layer("logits").alpha.assign(np.full(4, 0.7, np.float32))
    path = tmp_path / "q.keras"
    qmodel.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    x = tiny["test"][:16]
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(qmodel(x)), atol=1e-6)


@keras.saving.register_keras_serializable(package="quantflow_test")
class Doubler(layers.Layer):
    def call(self, x):
        return 2.0 * x


def test_weights_pickle_gives_the_same_fake_quant_model(tiny, tmp_path):
    from quantflow.formats.weights import extract_weights, load_weights, save_weights

    save_weights(extract_weights(tiny["model"]), tmp_path / "weights.pickle")
    from_pickle = fake_quant_model(load_weights(tmp_path / "weights.pickle"))
    from_model = fake_quant_model(tiny["model"])
    for qmodel in (from_pickle, from_model):
        calibrate(qmodel, tiny["train"], 4)
    x = tiny["test"][:64]
    assert np.array_equal(np.asarray(from_pickle(x)), np.asarray(from_model(x)))


def test_a_layer_with_no_int8_form_is_a_float_island():
    """A custom layer (here inside a nested model, which is flattened) and an LSTM stay
    float, their outputs quantized again; a weighted layer's activation with no TFLite
    form still stops with the layer named."""
    from quantflow.quant.lowering import island_layers

    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    inner_in = keras.Input(x.shape[1:])
    inner = keras.Model(inner_in, Doubler(name="twice")(inner_in), name="inner")
    x = layers.GlobalAveragePooling2D()(inner(x))
    qmodel = fake_quant_model(keras.Model(inputs, layers.Dense(2)(x)))
    assert island_layers(qmodel) == [{"layer": "twice", "class": "Doubler"}]
    assert "twice__float_island_quant" in [layer.name for layer in qmodel.layers]
    inputs = keras.Input((8, 4))
    model = keras.Model(inputs, layers.Dense(2)(layers.LSTM(3, name="memory")(inputs)))
    assert island_layers(fake_quant_model(model)) == [{"layer": "memory", "class": "LSTM"}]
    inputs = keras.Input((4,))
    model = keras.Model(inputs, layers.Dense(2, activation="gelu", name="fc")(inputs))
    with pytest.raises(QuantflowError, match=r"'fc' \(Dense\).*gelu"):
        fake_quant_model(model)


def test_bad_options():
    model = keras.Sequential([keras.Input((4,)), layers.Dense(2)])
    with pytest.raises(QuantflowError, match="weight_bits"):
        fake_quant_model(model, weight_bits=1)
    qmodel = fake_quant_model(model)
    with pytest.raises(QuantflowError, match="calibration method"):
        calibrate(qmodel, np.zeros((2, 4), np.float32), method="mean")


def test_agreement_figures():
    from quantflow.deploy.check import agreement

    fake = np.array([[0.0, 1.0, 5.0], [2.0, 2.1, 0.0], [1.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    lite = np.array([[0.0, 1.0, 5.0], [2.2, 2.1, 0.0], [1.0, 0.0, 0.1], [0.0, 2.9, 0.3]])
    fit = agreement(fake, lite, output_scale=0.1)
    assert fit["images"] == 4 and fit["top1_agreement"] == 0.75
    # margins in steps: 40, 1 (the flipped one: a near-tie), 10, 30
    assert fit["clear_margin_images"] == 3 and fit["top1_agreement_clear_margin"] == 1.0
    assert fit["mean_abs_logit_difference_steps"] == pytest.approx(7 / 12)
    assert fit["max_abs_logit_difference_steps"] == pytest.approx(3.0)
    with pytest.raises(QuantflowError, match="one shape"):
        agreement(fake, lite[:2], 0.1)


def test_grayscale_tiled_to_rgb_keeps_the_input_grid():
    """A zoo model on a grayscale dataset starts with Concatenate "gray_to_rgb" of the
    image three times, then Rescaling: the concatenation has no fake-quant op of its own and
    TFLite keeps it on the input's grid, which the export check accepts."""
    image = keras.Input((SIZE, SIZE, 1), name="image")
    x = layers.Concatenate(axis=-1, name="gray_to_rgb")([image, image, image])
    x = layers.Rescaling(1 / 127.5, offset=-1, name="rescale")(x)
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="conv")(x)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(6.0, name="relu6")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(image, layers.Dense(CLASSES, name="logits")(x))
    train, _ = synthetic_images(64, 1, seed=3)
    qmodel = fake_quant_model(model)
    calibrate(qmodel, train, 2)
    tflite = convert(qmodel, "int8", train[:32])
    from ai_edge_litert.interpreter import Interpreter

    from quantflow.deploy.check import check_activation_grids

    names = [t["name"] for t in Interpreter(model_content=tflite).get_tensor_details()]
    assert any("gray_to_rgb" in n for n in names), names  # the concatenation is there
    assert check_activation_grids(qmodel, tflite) == []
