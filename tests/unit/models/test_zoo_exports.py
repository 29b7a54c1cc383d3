"""Zoo models as users bring them: MobileNetV2 (alpha 0.35), EfficientNet-B0 and the
built-in MNasNet-A1 at 32x32, written by TensorFlow's own exporters (the TFLite converter,
Keras' SavedModel export, a frozen graph from a concrete function, tf_keras' Keras 2 .h5),
imported by quantflow.models.user with logits equal to the source's (1e-4 relative), and
fake-quantized (FAT's transform, calibrated) into int8 TFLite files that agree with their
simulation. Weights and BatchNorm statistics are randomised so the logits are not ~0."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from quantflow.models.user import read_model_file  # noqa: E402

SHAPE = (32, 32, 3)


def randomise(model, seed: int):
    """Weights that give logits of order one: kernels at He scale, BatchNorm statistics
    spread; returns the model."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for w in layer.weights:
            shape, name = tuple(w.shape), w.path.split("/")[-1]
            if name in ("gamma",):
                values.append(rng.uniform(0.8, 1.2, shape))
            elif name in ("moving_variance", "variance"):
                values.append(rng.uniform(0.8, 1.2, shape))
            elif name in ("beta", "moving_mean", "bias", "mean"):
                values.append(rng.normal(0, 0.05, shape))
            elif name == "count":
                values.append(np.asarray(w))
            else:
                fan_in = np.prod(shape[:-1]) if len(shape) > 1 else 1
                if "depthwise" in name or len(shape) == 4 and shape[-1] == 1:
                    fan_in = np.prod(shape[:2])
                values.append(rng.normal(0, np.sqrt(2.0 / fan_in), shape))
        if values:
            layer.set_weights([v.astype(np.float32) for v in values])
    return model


ZOO = {
    "mobilenet_v2": lambda: keras.applications.MobileNetV2(
        input_shape=SHAPE, alpha=0.35, weights=None, classes=10, classifier_activation=None
    ),
    "efficientnet_b0": lambda: keras.applications.EfficientNetB0(
        input_shape=SHAPE, weights=None, classes=10, classifier_activation=None
    ),
    "mnasnet_a1": lambda: _mnasnet(),
}


def _mnasnet():
    from quantflow.models.keras_apps import build_zoo_model

    return build_zoo_model("mnasnet_a1", SHAPE, 10, depth_multiplier=0.5, dropout=0.0)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 255, (48, *SHAPE)).astype(np.float32)


# MobileNetV2's TFLite import and fake quantization: test_tflite_import; the zoo MNasNet's
# fake quantization: tests/unit/quant/test_fakequant_zoo.py (its import: below)
@pytest.fixture(scope="module", params=["efficientnet_b0"])
def zoo(request):
    return request.param, randomise(ZOO[request.param](), 1)


def close(a, b, rtol=1e-4):
    scale = np.abs(b).max()
    assert scale > 0.1, "logits too small to compare"
    assert np.abs(np.asarray(a) - b).max() <= rtol * scale, np.abs(np.asarray(a) - b).max()


@pytest.fixture(scope="module")
def imported(zoo, tmp_path_factory):
    from quantflow.deploy.convert import convert

    name, model = zoo
    path = tmp_path_factory.mktemp("export") / f"{name}.tflite"
    path.write_bytes(convert(model, "fp32"))
    return path, read_model_file(path, "tflite_file")


def test_tflite_export_imports_with_equal_logits(imported, images):
    from quantflow.deploy.litert import TFLiteRunner

    path, model = imported
    runner = TFLiteRunner(path)
    x = images[:16]
    close(model(x), runner.scores(runner.run(runner.prepare(x))))


@pytest.mark.slow  # about 35 s; an imported model's FAT path in make test: test_own_models
def test_an_imported_export_fake_quantizes(imported, images, tmp_path):
    """FAT's transform of the imported model: its int8 file agrees with the simulation."""
    from quantflow.deploy.convert import convert
    from quantflow.deploy.litert import TFLiteRunner
    from quantflow.quant.calibrate import calibrate
    from quantflow.quant.transform import fake_quant_model

    qmodel = fake_quant_model(imported[1])
    calibrate(qmodel, images[16:], 1, batch_size=32)
    (tmp_path / "q.tflite").write_bytes(convert(qmodel, "int8", images[16:24]))
    q = TFLiteRunner(tmp_path / "q.tflite")
    tflite = q.scores(q.run(q.prepare(images[:32])))
    sim = np.asarray(qmodel(images[:32], training=False))
    step = q.output["quantization"][0]
    assert np.mean(np.abs(tflite - sim) / step) < 0.5
    assert np.mean(tflite.argmax(1) == sim.argmax(1)) >= 0.9


def test_mnasnet_tflite_export(images, tmp_path):
    from quantflow.deploy.convert import convert
    from quantflow.deploy.litert import TFLiteRunner

    model = randomise(ZOO["mnasnet_a1"](), 5)
    path = tmp_path / "m.tflite"
    path.write_bytes(convert(model, "fp32"))
    runner = TFLiteRunner(path)
    x = images[:8]
    close(read_model_file(path, "tflite_file")(x), runner.scores(runner.run(runner.prepare(x))))


@pytest.mark.parametrize("name", ["mobilenet_v2"])
def test_saved_model_export(name, images, tmp_path):
    model = randomise(ZOO[name](), 2)
    model.export(tmp_path / "sm", verbose=False)
    close(read_model_file(tmp_path / "sm", "saved_model")(images[:8]), model(images[:8]))


@pytest.mark.parametrize("name", ["mnasnet_a1"])
def test_frozen_graph_export(name, images, tmp_path):
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    model = randomise(ZOO[name](), 3)
    spec = tf.TensorSpec((None, *SHAPE), tf.float32, name="images")
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    graph = convert_variables_to_constants_v2(concrete).graph.as_graph_def()
    (tmp_path / "m.pb").write_bytes(graph.SerializeToString())
    close(read_model_file(tmp_path / "m.pb", "frozen_graph")(images[:8]), model(images[:8]))


@pytest.mark.parametrize("name", ["MobileNetV2", "EfficientNetB0"])
def test_keras2_h5_written_by_tf_keras(name, images, tmp_path):
    """A true Keras 2 file (tf_keras writes DepthwiseConv2D with a `groups` key that Keras
    3 refuses: quantflow leaves the neutral key out)."""
    tf_keras = pytest.importorskip("tf_keras")
    options = {"alpha": 0.35} if name == "MobileNetV2" else {}
    model = getattr(tf_keras.applications, name)(
        input_shape=SHAPE, weights=None, classes=10, classifier_activation=None, **options
    )
    rng = np.random.default_rng(4)
    model.set_weights(
        [
            (
                rng.uniform(0.8, 1.2, w.shape)
                if w.ndim == 1
                else rng.normal(0, np.sqrt(2.0 / np.prod(w.shape[:-1])), w.shape)
            ).astype(np.float32)
            for w in model.get_weights()
        ]
    )
    model.save(tmp_path / "m.h5")
    import h5py

    with h5py.File(tmp_path / "m.h5") as f:
        assert str(f.attrs["keras_version"]).startswith("2.")
    close(read_model_file(tmp_path / "m.h5", "h5_file")(images[:8]), model.predict(images[:8]))
