"""FAT threshold training (quantflow.fat) on a tiny random model: the held-out RMSE to the
float logits drops from a too-wide max calibration, and the alphas stay in their bounds."""

import io

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
from keras import layers  # noqa: E402

from quantflow import fakequant as fq  # noqa: E402
from quantflow.errors import QuantflowError  # noqa: E402
from quantflow.fat import logits_rmse, train_thresholds  # noqa: E402

SIZE = 16


def small_model():
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU(6.0)(x)
    x = layers.Conv2D(16, 1, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(4, name="logits")(x))


def smooth_images(n: int, rng) -> np.ndarray:
    """Ordinary images: smooth random patterns in the middle of the pixel range."""
    coarse = rng.normal(128, 30, (n, 4, 4, 3))
    x = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2) + rng.normal(0, 8, (n, SIZE, SIZE, 3))
    return np.clip(np.round(x), 0, 255).astype(np.float32)


@pytest.fixture(scope="module")
def setup():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = small_model()
    train, val = smooth_images(256, rng), smooth_images(64, rng)
    # calibration with a few salt-and-pepper outliers: max ranges far too wide
    outliers = (rng.random((4, SIZE, SIZE, 3)) < 0.5).astype(np.float32) * 255.0
    calibration = np.concatenate([train[:60], outliers])
    return model, train, val, calibration


def _quantized(model, calibration, **options):
    qmodel = fq.fake_quant_model(model, weight_bits=4, activation_bits=4, **options)
    fq.calibrate(qmodel, calibration, method="max")
    return qmodel


def _in_bounds(qmodel) -> bool:
    return all(
        np.all((np.asarray(v) >= low) & (np.asarray(v) <= high))
        for v, low, high in fq.alpha_bounds(qmodel)
    )


def test_training_lowers_held_out_rmse(setup):
    model, train, val, calibration = setup
    qmodel = _quantized(model, calibration)
    before = logits_rmse(model, qmodel, val)
    log = io.StringIO()
    dataset = tf.data.Dataset.from_tensor_slices(train).batch(16)
    result = train_thresholds(
        model,
        qmodel,
        dataset,
        epochs=3,
        learning_rate=0.02,
        reset_every=100,
        steps_per_epoch=12,
        val_ds=val,
        log_stream=log,
    )
    assert result["initial_val_rmse"] == pytest.approx(before, rel=1e-5)
    assert [row["epoch"] for row in result["history"]] == [1, 2, 3] and result["steps"] == 36
    assert result["final_val_rmse"] < 0.8 * result["initial_val_rmse"]
    assert logits_rmse(model, qmodel, val) == pytest.approx(result["final_val_rmse"], rel=1e-5)
    assert _in_bounds(qmodel)
    alphas = np.concatenate([np.ravel(v) for v in fq.alpha_variables(qmodel)])
    assert alphas.min() < 0.95  # the too-wide ranges were narrowed
    assert "val RMSE" in log.getvalue()


def test_alphas_are_clipped_to_their_bounds(setup):
    model, train, val, calibration = setup
    qmodel = _quantized(model, calibration, symmetric=False)
    train_thresholds(
        model, qmodel, train, epochs=1, learning_rate=1.0, steps_per_epoch=5, val_ds=val[:16]
    )
    assert _in_bounds(qmodel)
    info = fq.thresholds(qmodel)
    shifts = [row["alpha_t"] for row in info.values() if "alpha_t" in row]
    assert shifts and all(-0.2 - 1e-6 <= a <= 0.4 + 1e-6 for a in shifts)
    assert min(shifts) < -0.19  # pushed to a bound and clipped there
    assert all(
        row["range"][0] <= 0.0 <= row["range"][1]
        for row in info.values()
        if row["kind"] == "activation"
    )


def test_model_without_thresholds_is_refused(setup):
    model, train, _, _ = setup
    with pytest.raises(QuantflowError, match="no threshold parameters"):
        train_thresholds(model, model, train, epochs=1)
