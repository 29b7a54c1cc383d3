"""Staged fine-tuning: trainable scopes, restoring checkpoints by layer name, and the stage
loop that keeps the best epoch."""

import io

import keras
import numpy as np
import pytest
import tensorflow as tf

from quantflow.models import finetune
from quantflow.models import keras_apps as zoo
from quantflow.errors import QuantflowError


def _small_model(num_classes=3, extra=False, name="small"):
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Rescaling(1 / 255, name="preprocess")(inputs)
    x = keras.layers.Conv2D(8, 3, name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(8, 3, name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if extra:
        x = keras.layers.Dense(8, name="extra")(x)
    x = keras.layers.Dropout(0.1, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _dataset(n=48, seed=0, batch=16):
    """Learnable: the class is the brightest colour channel."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n, 8, 8, 3)).astype(np.float32)
    y = np.argmax(x.mean(axis=(1, 2)), axis=1).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def test_set_trainable_scopes():
    model = _small_model()
    assert finetune.set_trainable(model, "head") == ["logits"]
    assert not model.get_layer("bn1").trainable and not model.get_layer("conv1").trainable
    assert [w.name for w in model.trainable_weights] == ["kernel", "bias"]
    assert finetune.set_trainable(model, "all") == ["conv1", "bn1", "conv2", "logits"]
    assert finetune.set_trainable(model, ["conv2"]) == ["conv2"]
    assert finetune.set_trainable(model, ["conv", "head"]) == ["conv1", "conv2", "logits"]
    assert finetune.set_trainable(model, ["b*1"]) == ["bn1"]
    with pytest.raises(QuantflowError, match="'block9'"):
        finetune.set_trainable(model, ["conv1", "block9"])


def test_head_of_a_zoo_model_is_the_new_classifier():
    model = zoo.build_zoo_model("mnasnet_a1", (32, 32, 3), 4, depth_multiplier=0.5)
    assert [l.name for l in finetune.head_layers(model)] == ["head_dropout", "logits"]
    assert finetune.set_trainable(model, "head") == ["logits"]
    frozen_bn = model.get_layer("stem_bn")
    assert not frozen_bn.trainable  # Keras 3: a frozen BatchNormalization runs in inference mode


def test_frozen_batchnorm_keeps_its_statistics():
    model = _small_model()
    finetune.set_trainable(model, "head")
    bn = [w.copy() for w in model.get_layer("bn1").get_weights()]
    conv = model.get_layer("conv1").get_weights()[0].copy()
    head = model.get_layer("logits").get_weights()[0].copy()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        run_eagerly=True,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(_dataset(), epochs=1, shuffle=False, verbose=0)
    for before, after in zip(bn, model.get_layer("bn1").get_weights()):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(conv, model.get_layer("conv1").get_weights()[0])
    assert not np.allclose(head, model.get_layer("logits").get_weights()[0])


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5", ".h5"])
def test_restore_weights_excluding_the_head(tmp_path, suffix):
    source = _small_model(num_classes=10, name="source")
    path = tmp_path / f"checkpoint{suffix}"
    if suffix == ".keras":
        source.save(path)
    elif suffix == ".weights.h5":
        source.save_weights(path)
    else:  # legacy Keras layout (as in Keras' ImageNet files): one group per layer name
        import h5py
        from keras.src.legacy.saving import legacy_h5_format

        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, source)

    target = _small_model(num_classes=4, extra=True, name="target")
    restored, skipped = finetune.restore_weights(target, path, exclude=["logits"])
    assert restored == ["conv1", "bn1", "conv2"]
    assert skipped == ["extra", "logits"]
    for name in restored:
        for a, b in zip(source.get_layer(name).get_weights(), target.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)

    with pytest.raises(QuantflowError, match="layer 'logits' has weights of shapes"):
        finetune.restore_weights(target, path)


def test_restore_weights_errors(tmp_path):
    model = _small_model()
    with pytest.raises(QuantflowError, match="not found"):
        finetune.restore_weights(model, tmp_path / "missing.keras")
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="unrelated")])
    other.save(tmp_path / "other.keras")
    with pytest.raises(QuantflowError, match="no layer name in common"):
        finetune.restore_weights(model, tmp_path / "other.keras")


def test_stage_schedule():
    cosine = finetune.StageSchedule(1e-3, total_steps=10, steps_per_epoch=5, warmup_steps=2)
    values = [float(cosine(s)) for s in range(11)]
    assert values[0] == pytest.approx(5e-4) and values[1] == pytest.approx(1e-3)
    assert values[10] == pytest.approx(0.0, abs=1e-9) and values[5] < values[2]
    exponential = finetune.StageSchedule(1e-3, 10, 5, "exponential", decay_rate=0.5)
    assert float(exponential(5)) == pytest.approx(5e-4)
    assert float(finetune.StageSchedule(1e-3, 10, 5, "constant")(9)) == pytest.approx(1e-3)
    with pytest.raises(QuantflowError, match="unknown schedule 'linear'"):
        finetune.check_stage({"epochs": 1, "learning_rate": 1e-3, "schedule": "linear"}, 1)
    with pytest.raises(QuantflowError, match="missing epochs"):
        finetune.check_stage({"learning_rate": 1e-3}, 2)
    with pytest.raises(QuantflowError, match="unknown keys"):
        finetune.check_stage({"epochs": 1, "learning_rate": 1e-3, "lr": 1}, 1)


def test_fine_tune_two_stages_restores_the_best_epoch():
    keras.utils.set_random_seed(0)
    model = _small_model()
    train, val = _dataset(seed=0), _dataset(n=32, seed=1)
    log = io.StringIO()
    result = finetune.fine_tune(
        model,
        train,
        val,
        log_stream=log,
        stages=[
            {"trainable": "head", "epochs": 2, "learning_rate": 1e-2, "warmup_steps": 2},
            {
                "trainable": "all",
                "epochs": 2,
                "learning_rate": 1e-3,
                "schedule": "exponential",
                "decay_rate": 0.5,
            },
        ],
    )
    rows = result["history"]
    assert [(r["stage"], r["epoch"]) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(rows[0])
    best = result["best"]
    assert best["val_accuracy"] == max(r["val_accuracy"] for r in rows)
    winner = next(r for r in rows if r["val_accuracy"] == best["val_accuracy"])
    assert (best["stage"], best["epoch"]) == (winner["stage"], winner["epoch"])
    _, accuracy = model.evaluate(val, verbose=0)
    assert accuracy == pytest.approx(best["val_accuracy"])
    assert result["stages"][0]["trainable_layers"] == ["logits"]
    assert "stage 2" in log.getvalue()
