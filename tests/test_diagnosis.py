"""Per-layer diagnosis of int8 models (quantflow.diagnosis): the metrics on hand-made
tensors, a deliberately damaged layer found first, refusal of a different network."""

import numpy as np
import pytest

from quantflow import diagnosis
from quantflow.errors import QuantflowError


def test_metrics_by_hand():
    r = np.array([3.0, 4.0])
    q = np.array([3.0, 3.0])  # noise 1, signal 25
    assert diagnosis.snr_db(r, q) == pytest.approx(10 * np.log10(25))
    assert diagnosis.noise_ratio(r, q) == pytest.approx(1 / 25)
    assert diagnosis.cosine(r, q) == pytest.approx(21 / (5 * np.sqrt(18)))
    assert diagnosis.snr_db(r, r) == diagnosis.MAX_SNR_DB
    assert diagnosis.layer_name("m_1/block2_dw_1/depthwise;m_1/block2_dw_1/Relu") == "block2_dw_1"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    keras = pytest.importorskip("keras")
    from keras import layers

    from quantflow import fakequant as fq
    from quantflow import tflite

    keras.utils.set_random_seed(5)
    x = keras.Input((12, 12, 3), name="image")
    y = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    y = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(y)
    y = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv3")(y)
    y = layers.GlobalAveragePooling2D(name="gap")(y)
    model = keras.Model(x, layers.Dense(4, name="logits")(y))
    rng = np.random.default_rng(6)
    images = np.round(rng.uniform(0, 255, size=(64, 12, 12, 3))).astype(np.float32) / 255.0
    work = tmp_path_factory.mktemp("diagnosis")
    fp32 = work / "fp32.tflite"
    fp32.write_bytes(tflite.convert(model, "fp32"))
    qmodel = fq.fake_quant_model(model, input_range=None)
    fq.calibrate(qmodel, images, 2)
    sound = work / "sound.tflite"
    sound.write_bytes(tflite.convert(qmodel, "int8", images[:16]))
    # damage conv2's output: its calibrated range forced 40 times too wide
    damaged_layer = qmodel.get_layer("conv2_quant")
    damaged_layer.quantizer.t_max.assign(damaged_layer.quantizer.t_max * 40.0)
    damaged = work / "damaged.tflite"
    damaged.write_bytes(tflite.convert(qmodel, "int8", images[:16]))
    return {"fp32": fp32, "sound": sound, "damaged": damaged, "images": images,
            "model": model, "work": work}


def test_the_damaged_layer_comes_first(models):
    sound = diagnosis.diagnose(models["fp32"], models["sound"], models["images"][:32])
    damaged = diagnosis.diagnose(models["fp32"], models["damaged"], models["images"][:32])
    assert [row["op"] for row in damaged["layers"]] == [
        "CONV_2D", "CONV_2D", "CONV_2D", "MEAN", "FULLY_CONNECTED"]
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
    from quantflow import tflite

    x = keras.Input((12, 12, 3))
    other = keras.Model(x, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x)))
    path = tmp_path / "other.tflite"
    path.write_bytes(tflite.convert(other, "int8", models["images"][:8]))
    with pytest.raises(QuantflowError, match="no counterpart"):
        diagnosis.diagnose(models["fp32"], path, models["images"][:8])
