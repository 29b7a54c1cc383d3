"""Per-layer diagnosis of int8 models (quantflow.evaluate.diagnosis): the metrics on hand-made
tensors, a deliberately damaged layer found first, refusal of a different network."""

import numpy as np
import pytest

from quantflow.evaluate import diagnosis
from quantflow.errors import QuantflowError


def test_metrics_by_hand():
    r = np.array([3.0, 4.0])
    q = np.array([3.0, 3.0])  # noise 1, signal 25
    assert diagnosis.snr_db(r, q) == pytest.approx(10 * np.log10(25))
    assert diagnosis.noise_ratio(r, q) == pytest.approx(1 / 25)
    assert diagnosis.cosine(r, q) == pytest.approx(21 / (5 * np.sqrt(18)))
    assert diagnosis.snr_db(r, r) == diagnosis.MAX_SNR_DB
    assert diagnosis.layer_name("m_1/block2_dw_1/depthwise;m_1/block2_dw_1/Relu") == "block2_dw_1"
    assert diagnosis.layer_name("StatefulPartitionedCall_1:0") == "output"


def three_convs(seed: int):
    """conv1 -> conv2 -> conv3 (ReLU, 8 channels each) -> average pooling -> Dense(4)."""
    keras = pytest.importorskip("keras")
    from keras import layers

    keras.utils.set_random_seed(seed)
    x = keras.Input((12, 12, 3), name="image")
    y = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    y = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(y)
    y = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv3")(y)
    y = layers.GlobalAveragePooling2D(name="gap")(y)
    return keras.Model(x, layers.Dense(4, name="logits")(y))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from quantflow.deploy import convert as tflite
    from quantflow.quant.calibrate import calibrate
    from quantflow.quant.transform import fake_quant_model

    model = three_convs(seed=5)
    rng = np.random.default_rng(6)
    images = np.round(rng.uniform(0, 255, size=(64, 12, 12, 3))).astype(np.float32) / 255.0
    work = tmp_path_factory.mktemp("diagnosis")
    fp32 = work / "fp32.tflite"
    fp32.write_bytes(tflite.convert(model, "fp32"))
    qmodel = fake_quant_model(model, input_range=None)
    calibrate(qmodel, images, 2)
    sound = work / "sound.tflite"
    sound.write_bytes(tflite.convert(qmodel, "int8", images[:16]))
    # damage conv2's output: its calibrated range forced 40 times too wide
    damaged_layer = qmodel.get_layer("conv2_quant")
    damaged_layer.quantizer.t_max.assign(damaged_layer.quantizer.t_max * 40.0)
    damaged = work / "damaged.tflite"
    damaged.write_bytes(tflite.convert(qmodel, "int8", images[:16]))
    return {
        "fp32": fp32,
        "sound": sound,
        "damaged": damaged,
        "images": images,
        "model": model,
        "work": work,
    }


def test_the_damaged_layer_comes_first(models):
    sound = diagnosis.diagnose(models["fp32"], models["sound"], models["images"][:32])
    damaged = diagnosis.diagnose(models["fp32"], models["damaged"], models["images"][:32])
    assert [row["op"] for row in damaged["layers"]] == [
        "CONV_2D",
        "CONV_2D",
        "CONV_2D",
        "MEAN",
        "FULLY_CONNECTED",
    ]
    assert damaged["worst"][0] == 1  # conv2, the second op
    assert "conv2" in damaged["layers"][1]["layer"]
    # its SNR falls, its error in its own (now coarse) steps stays small, and every later
    # layer inherits the damage without adding much of its own
    assert damaged["layers"][1]["snr_db"] < sound["layers"][1]["snr_db"] - 15
    assert damaged["layers"][1]["rmse_steps"] < 1.0
    assert damaged["output_snr_db"] < sound["output_snr_db"] - 5
    assert damaged["layers"][1]["scale"] > 20 * sound["layers"][1]["scale"]
    # the sound model: every layer close to float
    assert all(row["cosine"] > 0.99 for row in sound["layers"])


def test_a_different_network_is_refused(models, tmp_path):
    keras = pytest.importorskip("keras")
    from quantflow.deploy import convert as tflite

    x = keras.Input((12, 12, 3))
    other = keras.Model(x, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x)))
    path = tmp_path / "other.tflite"
    path.write_bytes(tflite.convert(other, "int8", models["images"][:8]))
    with pytest.raises(QuantflowError, match="no counterpart"):
        diagnosis.diagnose(models["fp32"], path, models["images"][:8])


def test_float_fallback_of_the_worst_layer_beats_full_int8(tmp_path):
    """PTQ of a network with an outlier channel: conv2's channel 0 is 100 times larger
    (conv3 divides it back: the float function is unchanged), so the converter's
    per-tensor int8 range of conv2's output leaves its other channels a few levels. The
    diagnosis of the int8 model names conv2 first, then conv3 (which reads the damaged
    tensor). Leaving conv2 alone in float does not help: its output is quantized for
    conv3 all the same; leaving the two worst in float keeps that tensor float and
    recovers the float model's outputs far better than full int8."""
    from quantflow.deploy import convert as tflite
    from quantflow.deploy.litert import TFLiteRunner

    model = three_convs(seed=7)
    images = np.random.default_rng(8).uniform(0, 1, size=(96, 12, 12, 3)).astype(np.float32)
    before = np.asarray(model(images))
    conv2, conv3 = model.get_layer("conv2"), model.get_layer("conv3")
    k2, b2 = conv2.get_weights()
    k2[..., 0] *= 100.0
    b2[0] *= 100.0
    conv2.set_weights([k2, b2])
    k3, b3 = conv3.get_weights()
    k3[:, :, 0, :] /= 100.0
    conv3.set_weights([k3, b3])
    reference = np.asarray(model(images))
    np.testing.assert_allclose(reference, before, rtol=1e-4, atol=1e-4)

    fp32, int8, mixed = (tmp_path / f"{n}.tflite" for n in ("fp32", "int8", "mixed"))
    fp32.write_bytes(tflite.convert(model, "fp32"))
    int8.write_bytes(tflite.convert(model, "int8", images[:32]))
    report = diagnosis.diagnose(fp32, int8, images[:32])
    assert report["worst"][:2] == [1, 2] and "conv2" in report["layers"][1]["layer"]
    worst = [report["layers"][i]["tensor"] for i in report["worst"][:2]]
    mixed.write_bytes(tflite.convert_with_float_layers(model, images[:32], worst))
    assert tflite.float_ops(str(mixed)) == ["CONV_2D", "CONV_2D"]  # conv2, conv3

    def snr(path):
        runner = TFLiteRunner(path)
        return diagnosis.snr_db(reference, runner.scores(runner.run(runner.prepare(images))))

    assert snr(mixed) > snr(int8) + 6
