"""A user's own model, end to end, as a new user writes it (issue 10): keras.applications'
MobileNetV2 (alpha 0.35, no weights) behind Rescaling(1/255), global average pooling and a
Dense(10) head, saved as .keras and used as `arch: keras_file`.

- the train job's clean copy (`quantflow.models.callbacks.inference_copy`) of a Sequential model and of
  functional models with nested Sequential / functional parts;
- the FAT w8a8 int8 TFLite model of the functional version, briefly trained (BatchNorm
  momentum 0.9, well above chance but far from converged, as the issue's 34.5% model): it
  must reproduce its fake-quant Keras model (top-1 agreement >= 99.5%, the largest logit
  difference at most 2 output steps), and its activation tensors must carry the (perturbed)
  trained ranges. Before the int32-bias / exact-accumulator / zero-point fixes in
  quantflow.quant.transform this model agreed on 86-92.5% with logits up to 9-19 steps apart;
- a 3-channel keras_file model on a grayscale dataset: tiled to RGB, or a clear message.
"""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

from quantflow.quant.calibrate import alpha_bounds, calibrate  # noqa: E402
from quantflow.quant.transform import fake_quant_model  # noqa: E402
from quantflow.errors import QuantflowError  # noqa: E402
from quantflow.models.registry import model_from_spec  # noqa: E402
from quantflow.deploy.check import agreement, check_activation_grids  # noqa: E402
from quantflow.deploy.convert import convert  # noqa: E402
from quantflow.models.callbacks import inference_copy  # noqa: E402

SIZE, CLASSES = 32, 10
TRAIN_IMAGES, TEST_IMAGES = 2000, 400


def synthetic_images(n: int, seed: int, channels: int = 3):
    """Integer pixels in [0, 255], 10 classes: a colour cast on one of the three channels
    (class % 3) and stripes of one of four orientations (class // 3), random strength,
    period and phase, plus noise. About 30-50% after a few epochs from scratch."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    x = rng.normal(110, 30, (n, SIZE, SIZE, 3))
    x[np.arange(n), :, :, labels % 3] += rng.uniform(30, 70, n)[:, None, None]
    period, phase = rng.uniform(3, 6, (n, 1, 1)), rng.uniform(0, 2 * np.pi, (n, 1, 1))
    coords = np.stack([yy, xx, yy + xx, yy - xx])[labels // 3]
    x += (40 * np.sin(2 * np.pi * coords / period + phase))[..., None]
    x = np.clip(np.round(x), 0, 255).astype(np.float32)
    return (x.mean(-1, keepdims=True).round() if channels == 1 else x), labels


def mobilenet(momentum: float = 0.9):
    backbone = keras.applications.MobileNetV2(
        input_shape=(SIZE, SIZE, 3), alpha=0.35, include_top=False, weights=None
    )
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum
    return backbone


def sequential_user_model():
    """Exactly the issue's model."""
    return keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            layers.Rescaling(1 / 255),
            mobilenet(),
            layers.GlobalAveragePooling2D(),
            layers.Dense(CLASSES),
        ]
    )


def functional_user_model():
    image = keras.Input((SIZE, SIZE, 3))
    x = layers.Rescaling(1 / 255)(image)
    x = mobilenet()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(image, layers.Dense(CLASSES)(x))


def _same_predictions(a, b, x):
    np.testing.assert_allclose(np.asarray(a(x)), np.asarray(b(x)), rtol=1e-5, atol=1e-5)


def test_inference_copy_of_sequential_and_nested_models(tmp_path):
    keras.utils.set_random_seed(0)
    x, _ = synthetic_images(4, seed=3)
    sequential = sequential_user_model()
    inner = keras.Sequential([keras.Input((8,)), layers.Dense(8, activation="relu")])
    image = keras.Input((SIZE, SIZE, 3))
    h = layers.GlobalAveragePooling2D()(sequential.layers[1](layers.Rescaling(1 / 255)(image)))
    h = inner(layers.Dense(8)(h))
    functional = keras.Model(image, layers.Dense(CLASSES)(h))  # nested functional + Sequential
    for model in (sequential, functional):
        model.compile("adam", "mse")  # an optimizer that the copy must not keep
        clean = inference_copy(model)
        assert type(clean) is type(model) and getattr(clean, "optimizer", None) is None
        _same_predictions(model, clean, x)
        path = tmp_path / f"{model.name}.keras"
        clean.save(path)
        _same_predictions(model, keras.saving.load_model(path, compile=False), x)
    # through `arch: keras_file` as the train job loads it (10 classes: the head is kept)
    path = tmp_path / "mine.keras"
    sequential.save(path)
    loaded = model_from_spec({"arch": "keras_file", "path": str(path)}, (SIZE, SIZE, 3), CLASSES)
    _same_predictions(sequential, inference_copy(loaded), x)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The functional user model saved, loaded through keras_file, trained 5 epochs."""
    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("user") / "mine.keras"
    functional_user_model().save(path)
    model = model_from_spec({"arch": "keras_file", "path": str(path)}, (SIZE, SIZE, 3), CLASSES)
    x, y = synthetic_images(TRAIN_IMAGES, seed=0)
    test, labels = synthetic_images(TEST_IMAGES, seed=1)
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=64, epochs=5, verbose=0)
    return {"model": model, "train": x, "test": test, "labels": labels}


def test_user_model_int8_tflite_matches_fake_quant(trained, tmp_path):
    model, test = trained["model"], trained["test"]
    accuracy = float((np.asarray(model(test)).argmax(1) == trained["labels"]).mean())
    assert accuracy >= 0.2, accuracy  # clearly above chance (0.1)
    qmodel = fake_quant_model(model)
    calibrate(qmodel, trained["train"], 8)
    rng = np.random.default_rng(0)  # trained thresholds, not the calibrated ones
    for variable, low, high in alpha_bounds(qmodel):
        variable.assign(rng.uniform(0.7, 1.0, variable.shape).astype(np.float32))
    path = tmp_path / "model.keras"
    qmodel.save(path)  # as the fat job hands it to fat_tflite
    qmodel = keras.saving.load_model(path, compile=False)
    tflite = convert(qmodel, "int8", trained["train"][:32])
    assert check_activation_grids(qmodel, tflite) == []

    from quantflow.deploy.litert import TFLiteRunner

    (tmp_path / "model.tflite").write_bytes(tflite)
    runner = TFLiteRunner(tmp_path / "model.tflite")
    scores = runner.scores(runner.run(runner.prepare(test)))
    fake = np.asarray(qmodel(test, training=False))
    fit = agreement(fake, scores, runner.output["quantization"][0])
    print(f"\nuser model: float accuracy {accuracy:.3f}; {fit}")
    assert fit["top1_agreement"] >= 0.995
    assert fit["top1_agreement_clear_margin"] == 1.0
    assert fit["mean_abs_logit_difference_steps"] <= 0.5
    assert fit["max_abs_logit_difference_steps"] <= 2.0 + 1e-4


def test_activation_grid_check_reports_a_changed_range(trained):
    qmodel = fake_quant_model(trained["model"])
    calibrate(qmodel, trained["train"], 2)
    tflite = convert(qmodel, "int8", trained["train"][:32])
    assert check_activation_grids(qmodel, tflite) == []
    quantizer = qmodel.get_layer("block_1_expand_quant")
    quantizer.alpha.assign(0.8)  # the model no longer says what the TFLite file holds
    found = check_activation_grids(qmodel, tflite)
    assert [m["quantizer"] for m in found] == [quantizer.name], found
    assert found[0]["scale"] == pytest.approx(found[0]["expected_scale"] / 0.8, rel=1e-4)


def test_rgb_user_model_on_grayscale_images(tmp_path):
    keras.utils.set_random_seed(0)
    path = tmp_path / "mine.keras"
    sequential_user_model().save(path)
    model = model_from_spec({"arch": "keras_file", "path": str(path)}, (SIZE, SIZE, 1), 4)
    assert model.input_shape == (None, SIZE, SIZE, 1) and model.output_shape == (None, 4)
    gray, _ = synthetic_images(8, seed=2, channels=1)
    rgb = np.repeat(gray, 3, axis=-1)
    np.testing.assert_allclose(
        np.asarray(model(gray)),
        np.asarray(model.layers[-1](rgb)),
        rtol=1e-5,
        atol=1e-5,
    )
    qmodel = fake_quant_model(model)  # the tiling is exact in int8 too
    calibrate(qmodel, gray, 1)
    assert np.asarray(qmodel(gray)).shape == (8, 4)
    with pytest.raises(QuantflowError, match=r"images of shape \(32, 32, 3\).*\(28, 28, 1\)"):
        model_from_spec({"arch": "keras_file", "path": str(path)}, (28, 28, 1), 4)
