"""Float islands (quantflow.quant.transform): a layer with no int8 form (a Lambda, a
user's registered layer) computes in float in the fake-quant model and in its int8 TFLite
file, where the converter is told to leave its ops float; the file then predicts what the
simulation does, to the output step."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

from quantflow.deploy.check import island_ops  # noqa: E402
from quantflow.deploy.convert import convert, float_ops  # noqa: E402
from quantflow.deploy.litert import TFLiteRunner  # noqa: E402
from quantflow.quant.calibrate import calibrate  # noqa: E402
from quantflow.quant.lowering import island_layers  # noqa: E402
from quantflow.quant.transform import fake_quant_model  # noqa: E402


@keras.saving.register_keras_serializable(package="quantflow_island_test")
class ChannelScale(layers.Layer):
    """A user's layer with weights: x * s per channel, then tanh (TANH next to a
    fake-quant op is what the converter quantizes unless fenced)."""

    def build(self, shape):
        self.s = self.add_weight(shape=(shape[-1],), initializer="ones", name="s")

    def call(self, x):
        return keras.ops.tanh(x * self.s)


def mish(t):
    return t * keras.ops.tanh(keras.ops.softplus(t))


@pytest.fixture(scope="module")
def island_model():
    inputs = keras.Input((12, 12, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(8, 3, activation="relu", name="conv1")(x)
    x = layers.Lambda(mish, name="mish")(x)
    x = layers.Conv2D(8, 3, name="conv2")(x)
    x = ChannelScale(name="scale")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(5, name="logits")(x))
    model.get_layer("scale").set_weights([np.linspace(0.5, 2.0, 8).astype(np.float32)])
    images = np.random.default_rng(3).integers(0, 256, (96, 12, 12, 3)).astype(np.float32)
    return model, images


def test_islands_stay_float_in_the_file_and_match_the_simulation(island_model, tmp_path):
    model, images = island_model
    qmodel = fake_quant_model(model)
    islands = island_layers(qmodel)
    assert islands == [
        {"layer": "mish", "class": "Lambda"},
        {"layer": "scale", "class": "ChannelScale"},
    ]
    calibrate(qmodel, images[:64], 2)
    flatbuffer = convert(qmodel, "int8", images[:16], float_islands=["mish", "scale"])
    path = tmp_path / "m.tflite"
    path.write_bytes(flatbuffer)
    # the islands' own ops are float, every other compute op int8
    assert sorted(island_ops(flatbuffer, "mish")) == ["ADD", "EXP", "LOG", "MUL", "TANH"]
    assert sorted(island_ops(flatbuffer, "scale")) == ["MUL", "TANH"]
    assert sorted(float_ops(flatbuffer)) == sorted(
        ["ADD", "EXP", "LOG", "MUL", "TANH", "MUL", "TANH"] + ["CAST"] * 8
    )
    runner = TFLiteRunner(path)
    assert np.dtype(runner.input["dtype"]) == np.int8
    x = images[64:]
    tflite = runner.scores(runner.run(runner.prepare(x)))
    sim = np.asarray(qmodel(x, training=False))
    step = runner.output["quantization"][0]
    assert np.abs(tflite - sim).max() <= 1.01 * step
    assert np.mean(tflite.argmax(1) == sim.argmax(1)) >= 0.95
    # without being told, the converter quantizes the islands (EXP, LOG, TANH in int8)
    plain = convert(qmodel, "int8", images[:16])
    assert set(float_ops(plain)) <= {"CAST"}


def test_a_fake_quant_model_with_islands_saves_and_reloads(island_model, tmp_path):
    model, images = island_model
    inputs = keras.Input((12, 12, 3))
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    x = ChannelScale(name="scale")(x)
    plain = keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling2D()(x)))
    qmodel = fake_quant_model(plain)
    calibrate(qmodel, images[:32], 1)
    qmodel.save(tmp_path / "q.keras")
    loaded = keras.saving.load_model(tmp_path / "q.keras", compile=False)
    assert island_layers(loaded) == [{"layer": "scale", "class": "ChannelScale"}]
    np.testing.assert_allclose(np.asarray(loaded(images[:8])), np.asarray(qmodel(images[:8])))


def test_packed_size_counts_an_islands_weights_as_float(island_model):
    from quantflow.quant.packed import packed_size_bytes

    model, _ = island_model
    qmodel = fake_quant_model(model)
    without = fake_quant_model(
        keras.Model(model.inputs, model.get_layer("conv2").output)
    )  # the same layers up to conv2: no ChannelScale
    logits = qmodel.get_layer("logits")
    tail = (int(np.prod(logits.kernel.shape)) * 8 + 32 * (5 + 5)) // 8
    assert packed_size_bytes(qmodel) == packed_size_bytes(without) + 8 * 4 + tail
