"""The model zoo: every architecture builds small, trains a step, converts to full-int8
TFLite and runs in LiteRT; preprocessing folds are exact; weights rules and errors."""

import keras
import numpy as np
import pytest

from quantflow.models.keras_apps import (
    BN_MOMENTUM,
    ZOO_ARCHITECTURES,
    build_zoo_model,
    default_input_size,
    reverse_input_channels,
)
from quantflow.models.user import load_user_model
from quantflow.errors import QuantflowError
from quantflow.models.mnasnet import _make_divisible, mnasnet_a1
from quantflow.deploy.convert import convert

# Ops whose int32 outputs are shape arithmetic (EfficientNet's SE Reshape), not activations.
SHAPE_OPS = {"SHAPE", "STRIDED_SLICE", "PACK"}
NUM_CLASSES = 5


def _images(shape, n, seed=0):
    """Random pixels in [0, 255], both ends included (so calibration sees the full range)."""
    x = np.random.default_rng(seed).uniform(0, 255, (n, *shape)).astype(np.float32)
    x.flat[0], x.flat[-1] = 0.0, 255.0
    return x


def _run_litert(tflite: bytes, images: np.ndarray):
    """Int8 outputs of a batch, the interpreter and (op name, output dtypes) of every op."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=tflite)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], list(images.shape))
    interp.allocate_tensors()
    scale, zero = inp["quantization"]
    q = np.clip(np.round(images / scale) + zero, -128, 127).astype(inp["dtype"])
    interp.set_tensor(inp["index"], q)
    interp.invoke()
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    ops = [(op["op_name"], {dtypes[i] for i in op["outputs"]}) for op in interp._get_ops_details()]
    return interp.get_tensor(out["index"]), inp, out, ops


@pytest.mark.parametrize(
    "arch, options, shape",
    [
        ("mobilenet_v2", {"alpha": 0.35}, (32, 32, 3)),
        ("resnet50", {}, (32, 32, 3)),
        # ResNet101 is ResNet50 with more blocks: minutes of CPU for the same code path
        pytest.param("resnet101", {}, (32, 32, 3), marks=pytest.mark.slow),
        ("efficientnet_b0", {}, (32, 32, 3)),
        ("mnasnet_a1", {"depth_multiplier": 0.5}, (32, 32, 1)),  # grayscale: tiled to RGB
        ("tiny_mobilenet", {}, (28, 28, 1)),
    ],
)
def test_zoo_model_trains_and_converts_to_int8(arch, options, shape):
    model = build_zoo_model(arch, shape, NUM_CLASSES, **options)
    assert model.input_shape == (None, *shape)
    assert model.output_shape == (None, NUM_CLASSES)
    assert model.layers[-1].name == "logits" and model.layers[-1].activation.__name__ == "linear"
    assert not any(isinstance(l, (keras.layers.Lambda, keras.Model)) for l in model.layers)

    x = _images(shape, 4)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        run_eagerly=True,  # no graph tracing
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = model.get_layer("logits").get_weights()[0].copy()
    loss = model.train_on_batch(x, np.arange(4) % NUM_CLASSES)
    assert np.isfinite(loss)
    assert not np.allclose(before, model.get_layer("logits").get_weights()[0])

    tflite = convert(model, "int8", x)
    y, inp, out, ops = _run_litert(tflite, _images(shape, 3, seed=1))
    assert y.shape == (3, NUM_CLASSES)
    assert np.dtype(inp["dtype"]) == np.int8 and np.dtype(out["dtype"]) == np.int8
    assert inp["quantization"] == pytest.approx((1.0, -128), rel=1e-5)  # [0, 255] pixels, lossless
    for name, dtypes in ops:
        assert not name.startswith("Flex") and name != "CUSTOM", name
        assert dtypes == {"int8"} or (name in SHAPE_OPS and dtypes == {"int32"}), (name, dtypes)


def test_mnasnet_parameter_count_matches_the_paper():
    full = mnasnet_a1((32, 32, 3), 1.0, include_top=True, classes=1000)
    assert abs(full.count_params() - 3.9e6) / 3.9e6 < 0.05  # 3,920,526
    small = mnasnet_a1((32, 32, 3), 0.5, include_top=True).count_params()
    large = mnasnet_a1((32, 32, 3), 1.3, include_top=True).count_params()
    assert small < full.count_params() < large
    assert full.get_layer("block2a_se_reduce").filters == 6  # int(0.25 * 24 input channels)
    assert full.output_shape == (None, 1000)
    assert [_make_divisible(c * 0.5) for c in (32, 16, 24, 40)] == [16, 8, 16, 24]
    assert [_make_divisible(c * 1.3) for c in (32, 16, 24, 40)] == [40, 24, 32, 56]


def test_mnasnet_rejects_a_bad_depth_multiplier():
    with pytest.raises(QuantflowError, match="depth_multiplier"):
        mnasnet_a1((32, 32, 3), 0)


def _call(model, x):
    """Inference outputs of one eager call (no predict() tracing)."""
    return keras.ops.convert_to_numpy(model(x, training=False))


def _copy_by_name(source, target):
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())


def test_resnet_channel_flip_equals_caffe_preprocessing():
    """Random weights stand in for pretrained ones: RGB minus the means into the flipped
    network equals keras' caffe preprocess_input (BGR, minus means) into the original."""
    shape = (32, 32, 3)
    model = build_zoo_model("resnet50", shape, NUM_CLASSES, dropout=0.0)
    base = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=shape, pooling="avg"
    )
    _copy_by_name(model, base)
    reverse_input_channels(model, "conv1_conv")
    features = keras.Model(model.input, model.get_layer("avg_pool").output)
    x = _images(shape, 4)
    expected = _call(base, keras.applications.resnet.preprocess_input(x.copy()))
    got = _call(features, x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.fixture
def keras_imagenet_from(monkeypatch):
    """Make keras.applications load "imagenet" weights from a local file (no network)."""
    from keras.src.utils import file_utils

    def use(path):
        monkeypatch.setattr(file_utils, "get_file", lambda *args, **kwargs: str(path))

    return use


@pytest.mark.parametrize(
    "arch, application", [("resnet50", "ResNet50"), ("efficientnet_b0", "EfficientNetB0")]
)
def test_weights_file_equals_keras_imagenet_model(tmp_path, keras_imagenet_from, arch, application):
    """A backbone weights file loads as Keras' ImageNet model would, folds included:
    the zoo model on RGB [0, 255] equals Keras' preprocess_input + its weights="imagenet"
    network (with the file standing in for the download)."""
    shape = (32, 32, 3)
    app = getattr(keras.applications, application)
    source = app(include_top=False, weights=None, input_shape=shape, pooling="avg")
    rng = np.random.default_rng(0)
    for layer in source.layers:  # non-trivial BN / Normalization statistics
        if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.Normalization)):
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, w.shape).astype(np.float32) if w.ndim else w
                    for w in layer.get_weights()
                ]
            )
    path = tmp_path / f"{arch}.weights.h5"
    source.save_weights(path)

    model = build_zoo_model(arch, shape, NUM_CLASSES, weights=str(path), dropout=0.0)
    keras_imagenet_from(path)
    reference = app(include_top=False, weights="imagenet", input_shape=shape, pooling="avg")
    module = keras.applications.resnet if arch == "resnet50" else keras.applications.efficientnet
    x = _images(shape, 4)
    expected = _call(reference, module.preprocess_input(x.copy()))
    got = _call(keras.Model(model.input, model.get_layer("avg_pool").output), x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_imagenet_offline_raises_with_a_hint(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(QuantflowError) as err:
        build_zoo_model("mobilenet_v2", (32, 32, 3), 3, weights="imagenet", alpha=0.35)
    message = str(err.value)
    assert "could not download" in message
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5" in message
    assert "~/.keras/models/" in message and "weights: /path/to/" in message


def test_weights_rules():
    with pytest.raises(QuantflowError, match="no ImageNet weights for mnasnet_a1"):
        build_zoo_model("mnasnet_a1", (32, 32, 3), 3, weights="imagenet")
    with pytest.raises(QuantflowError, match="not found"):
        build_zoo_model("resnet50", (32, 32, 3), 3, weights="/nonexistent/r50.weights.h5")
    with pytest.raises(QuantflowError, match="restore_weights"):
        build_zoo_model("resnet50", (32, 32, 3), 3, weights="/some/model.keras")
    with pytest.raises(QuantflowError, match="alpha must be|ImageNet weights exist for alpha"):
        build_zoo_model("mobilenet_v2", (32, 32, 3), 3, weights="imagenet", alpha=0.6)
    with pytest.raises(QuantflowError, match="no pretrained weights"):
        build_zoo_model("tiny_mobilenet", (28, 28, 1), 3, weights="imagenet")


@pytest.mark.filterwarnings("ignore::UserWarning")  # Keras warns before it fails
def test_weights_file_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "mnas.weights.h5"
    mnasnet_a1((32, 32, 3), 0.5).save_weights(path)
    with pytest.raises(QuantflowError, match="does not fit the mnasnet_a1 backbone"):
        build_zoo_model("mnasnet_a1", (32, 32, 3), 3, weights=str(path))


def test_argument_checks():
    with pytest.raises(QuantflowError, match="unknown zoo architecture"):
        build_zoo_model("vgg16", (32, 32, 3), 3)
    with pytest.raises(QuantflowError, match="minimum"):
        build_zoo_model("mobilenet_v2", (16, 16, 3), 3)
    with pytest.raises(QuantflowError, match="alpha"):
        build_zoo_model("resnet50", (32, 32, 3), 3, alpha=0.5)
    with pytest.raises(QuantflowError, match="depth_multiplier"):
        build_zoo_model("mobilenet_v2", (32, 32, 3), 3, depth_multiplier=0.5)
    with pytest.raises(QuantflowError, match="1 or 3 channels"):
        build_zoo_model("mobilenet_v2", (32, 32, 4), 3)
    assert default_input_size("resnet101") == 224
    assert default_input_size("tiny_mobilenet") == 28
    assert set(ZOO_ARCHITECTURES) == {
        "mobilenet_v2",
        "resnet50",
        "resnet101",
        "efficientnet_b0",
        "mnasnet_a1",
        "tiny_mobilenet",
    }


def test_preprocessing_layers_are_in_the_model():
    model = build_zoo_model("mnasnet_a1", (32, 32, 1), 3, depth_multiplier=0.5)
    names = [l.name for l in model.layers[:3]]
    assert names == ["image", "gray_to_rgb", "preprocess"]
    scale = model.get_layer("preprocess")
    assert np.allclose(scale(np.array([[0.0, 255.0]], np.float32)), [[-1.0, 1.0]])


def _user_model(path, head=True):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="features")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if head:
        x = keras.layers.Dense(10, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, x)
    model.save(path)
    return model


def test_load_user_model_replaces_the_head(tmp_path):
    original = _user_model(tmp_path / "user.keras")
    same = load_user_model(tmp_path / "user.keras", num_classes=10)
    assert same.output_shape == (None, 10) and same.layers[-1].name == "predictions"

    model = load_user_model(tmp_path / "user.keras", num_classes=3)
    assert model.output_shape == (None, 3)
    head = model.layers[-1]
    assert head.name == "logits" and head.activation.__name__ == "linear"
    np.testing.assert_array_equal(
        model.get_layer("features").get_weights()[0],
        original.get_layer("features").get_weights()[0],
    )


def test_load_user_model_errors(tmp_path):
    with pytest.raises(QuantflowError, match="not found"):
        load_user_model(tmp_path / "missing.keras")
    bad = tmp_path / "bad.keras"
    bad.write_text("not a model")
    with pytest.raises(QuantflowError, match="not a loadable Keras model"):
        load_user_model(bad)
    _user_model(tmp_path / "headless.keras", head=False)
    with pytest.raises(QuantflowError, match="no Dense layer"):
        load_user_model(tmp_path / "headless.keras", num_classes=3)


def test_batchnorm_momentum_is_capped_for_short_training():
    """Keras' MobileNetV2 uses momentum 0.999: a few epochs from scratch would leave its
    moving statistics near their initial values (an inference model at chance)."""

    def batchnorms(model):
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                yield from batchnorms(layer)
            elif isinstance(layer, keras.layers.BatchNormalization):
                yield layer

    model = build_zoo_model("mobilenet_v2", (32, 32, 1), 3, alpha=0.35)
    momenta = {layer.momentum for layer in batchnorms(model)}
    assert momenta == {BN_MOMENTUM} and BN_MOMENTUM == 0.99
    config = model.get_config()  # saved with the model
    assert '"momentum": 0.999' not in str(config).replace("'", '"')
