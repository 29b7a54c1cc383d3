"""The float model's check (quantflow.models.health): at chance, overfit or fine, with the
likely cause when BatchNorm momentum is high; and the momentum cap for user models."""

import pytest

keras = pytest.importorskip("keras")

from quantflow.models.health import batchnorm_momentum, float_model_check, momenta  # noqa: E402


def test_at_chance_names_the_momentum_and_the_config_key():
    check = float_model_check({"accuracy": 0.86, "val_accuracy": 0.10}, 10, [0.999, 0.9], 2)
    assert check["status"] == "near_chance" and check["chance"] == 0.1
    assert "validation top-1 10.0% with 10 classes (chance 10.0%)" in check["warning"]
    assert "momentum up to 0.999" in check["warning"]
    assert "train.batchnorm_momentum" in check["warning"]
    assert "verdict is withheld" in check["warning"]
    # no BatchNorm to blame: the generic advice
    plain = float_model_check({"accuracy": 0.5, "val_accuracy": 0.12}, 10, [], 2)
    assert plain["status"] == "near_chance" and "momentum" not in plain["warning"]


def test_far_below_training_and_fine():
    gap = float_model_check({"accuracy": 0.95, "val_accuracy": 0.60}, 10, [0.9], 3)
    assert gap["status"] == "overfit" and "far below its training top-1 (95.0%)" in gap["warning"]
    ok = float_model_check({"accuracy": 0.92, "val_accuracy": 0.91}, 10, [0.999], 3)
    assert ok == {**ok, "status": "ok", "warning": None}


def test_momentum_set_or_capped():
    layers = keras.layers
    x = keras.Input((8, 8, 1))
    y = layers.BatchNormalization(momentum=0.999, name="a")(layers.Conv2D(2, 3)(x))
    inner = keras.Sequential([layers.BatchNormalization(momentum=0.9, name="b")])
    model = keras.Model(x, inner(y))
    assert sorted(momenta(model)) == [0.9, 0.999]
    assert batchnorm_momentum(model, cap=0.99) == ["a: momentum 0.999 -> 0.99"]
    assert batchnorm_momentum(model, cap=0.99) == []
    assert len(batchnorm_momentum(model, 0.8)) == 2 and momenta(model) == [0.8, 0.8]
