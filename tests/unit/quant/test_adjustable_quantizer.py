"""The adjustable mixed-precision quantizers (quantflow.quant.adjustable): per-channel
trainable range (alpha) and precision (beta), their grids, gradients, bit bounds, and the
path through the fake-quant transform, calibration and .keras saving."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
layers = keras.layers

from quantflow.quant.config import QuantConfig
from quantflow.quant.calibrate import (
    activation_quantizers,
    calibrate,
    thresholds,
    weight_quantizers,
)
from quantflow.quant.transform import fake_quant_model
from quantflow.quant import calibrate as cal  # noqa: E402
from quantflow.quant.quantizers.adjustable import (
    AdjustableActivationQuantizer,
    AdjustableWeightQuantizer,
)
from quantflow.quant.quantizers.fat import FatWeightQuantizer  # noqa: E402
from quantflow.quant.registry import quantizer_class  # noqa: E402

ADJ = {"*": {"weight_quantizer": "adjustable", "activation_quantizer": "adjustable"}}


class Host(layers.Layer):
    """A bare layer owning a quantizer's variables."""


def weight_quantizer(view, **options):
    q = AdjustableWeightQuantizer(bits=8, **options)
    q.build(Host(), view.shape[-1])
    q.reset(view)
    return q


def test_registered_by_name():
    assert quantizer_class("weight", "adjustable") is AdjustableWeightQuantizer
    assert quantizer_class("activation", "adjustable") is AdjustableActivationQuantizer


def test_init_grid_is_hand_computed_and_fat_weight_grid():
    rng = np.random.default_rng(0)
    view = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
    q = weight_quantizer(view)
    # weights at init: S = T/127 per output channel, integers in [-127, 127]
    t = np.abs(view).reshape(-1, 4).max(axis=0)
    step = t / np.float32(127.0)
    reference = np.clip(np.round(view / step), -127, 127) * step
    out = np.asarray(q(tf.constant(view)))
    np.testing.assert_array_equal(out, reference)
    assert q.channel_bits().tolist() == [8, 8, 8, 8]
    # the same grid as FAT's 8-bit per-channel symmetric narrow-range weights
    fat = FatWeightQuantizer(bits=8, per_channel=True)
    fat.build(Host(), 4)
    fat.reset(view)
    np.testing.assert_allclose(np.asarray(fat(tf.constant(view))), out, rtol=0, atol=1e-6)

    # activations: unsigned S = T/255 on [0, 255]; signed S = T/128 on [-128, 127]
    x = rng.normal(size=(2, 5, 3)).astype(np.float32) * 3
    for signed in (False, True):
        a = AdjustableActivationQuantizer(bits=8, signed=signed)
        a.build(Host(), 3)
        t = np.array([1.0, 2.0, 0.5], np.float32)
        a.set_statistics(np.zeros(3), t)
        if signed:
            s = t / np.float32(128.0)
            ref = np.clip(np.round(x / s), -128, 127) * s
        else:
            s = t / np.float32(255.0)
            ref = np.clip(np.round(x / s), 0, 255) * s
        np.testing.assert_array_equal(np.asarray(a(tf.constant(x))), ref)
        lo, hi = (np.asarray(v) for v in a.quant_range())
        np.testing.assert_allclose(hi, t * (127 / 128 if signed else 1.0), rtol=1e-6)


def test_gradients_reach_alpha_and_beta():
    rng = np.random.default_rng(1)
    view = rng.normal(size=(16, 4)).astype(np.float32)
    q = weight_quantizer(view)
    q.beta.assign(np.full(4, 0.5, np.float32))  # 4 bits: a coarse grid, large errors
    target = tf.constant(view)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum((q(target) - target) ** 2)
    grads = tape.gradient(loss, [q.alpha, q.beta])
    for g in grads:
        g = np.asarray(g)
        assert np.all(np.isfinite(g)) and np.any(g != 0)
    a = AdjustableActivationQuantizer(bits=8, signed=False)
    a.build(Host(), 4)
    a.set_statistics(0.0, np.ones(4))
    a.beta.assign(np.full(4, 0.4, np.float32))
    x = tf.constant(rng.uniform(0, 1.2, size=(8, 4)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(a(x) * x)
    for g in tape.gradient(loss, [a.alpha, a.beta]):
        assert np.all(np.isfinite(g)) and np.any(np.asarray(g) != 0)


def test_a_loss_rewarding_fewer_bits_moves_bits_down_within_bounds():
    rng = np.random.default_rng(2)
    view = rng.normal(size=(16, 3)).astype(np.float32)
    q = weight_quantizer(view, min_bits=3)
    optimizer = keras.optimizers.SGD(0.05)
    for _ in range(40):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(q.bits_tensor())  # beta * n through the STE
        grads = tape.gradient(loss, q.trainable_variables)
        optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, q.trainable_variables) if g is not None]
        )
        cal_clip(q)
    bits = q.channel_bits()
    assert bits.dtype.kind == "i" and bits.tolist() == [3, 3, 3]
    assert q.describe()["channel_bits"] == [3, 3, 3]
    # at 3 bits: 3 levels each side of zero
    out = np.asarray(q(tf.constant(view)))
    step = np.abs(view).max(axis=0) / 3.0
    assert np.all([len(np.unique(np.round(out[:, c] / step[c]))) <= 7 for c in range(3)])


def cal_clip(q):
    for variable, low, high in q.alpha_bounds():
        variable.assign(keras.ops.clip(variable, low, high))


def tiny_model():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 8, 3), name="image")
    x = layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = layers.Conv2D(8, 3, padding="same", name="stem")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.ReLU(name="dw_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, layers.Dense(5, name="logits")(x), name="tiny")
    # BatchNorm statistics that are not the identity, so folding matters
    bn = model.get_layer("stem_bn")
    bn.set_weights(
        [w + np.random.default_rng(0).uniform(0.1, 0.5, w.shape) for w in bn.get_weights()]
    )
    return model


def images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3)).astype(np.float32)


@pytest.fixture  # fresh per test: some tests move its alphas and betas
def adjusted():
    model = tiny_model()
    qmodel = fake_quant_model(model, overrides=ADJ)
    calibrate(qmodel, images(64, 1), 2)
    return model, qmodel


def test_through_the_transform_close_to_float_at_8_bits(adjusted):
    model, qmodel = adjusted
    acts = activation_quantizers(qmodel)
    ops = weight_quantizers(qmodel)
    assert {type(l.quantizer) for l in acts} == {AdjustableActivationQuantizer}
    assert {type(l.quantizer) for l in ops} == {AdjustableWeightQuantizer}
    info = thresholds(qmodel)
    assert info["stem/kernel"]["channel_bits"] == [8] * 8
    calibrated = {l.name: l for l in acts if l.fixed_range is None}
    # after ReLU (fused into stem / dw) and the pooling of a ReLU output: unsigned grids
    assert {n: l.signed for n, l in calibrated.items()} == {
        "stem_quant": False,
        "dw_quant": False,
        "pool_quant": False,
        "logits_quant": True,
    }
    for layer in calibrated.values():  # per-channel T, alpha, beta
        assert len(info[layer.name]["t_max"]) == layer.quantizer.channels
        assert len(info[layer.name]["channel_bits"]) == layer.quantizer.channels
    # next to per-channel grids the layers compute in float (no TFLite integer path)
    assert all(op._input_range is None for op in ops)
    x = images(48, 7)
    ref, out = np.asarray(model(x)), np.asarray(qmodel(x))
    agree = np.mean(ref.argmax(1) == out.argmax(1))
    assert agree >= 0.95, agree
    assert np.max(np.abs(ref - out)) < 0.05 * np.max(np.abs(ref)) + 1e-3


def test_calibration_sets_per_channel_activation_maxima(adjusted):
    model, qmodel = adjusted
    layer = next(l for l in activation_quantizers(qmodel) if l.name.startswith("stem"))
    probe = keras.Model(qmodel.input, layer._inbound_nodes[0].input_tensors[0])
    with cal.float_mode(qmodel):
        values = np.concatenate(
            [np.asarray(probe(b)) for b in (images(64, 1)[:32], images(64, 1)[32:])]
        )
    expected = np.maximum(values, 0).reshape(-1, values.shape[-1]).max(axis=0)
    np.testing.assert_allclose(
        np.asarray(layer.quantizer.t_max), np.maximum(expected, 1e-6), rtol=1e-5
    )


def test_save_load_round_trip_after_training(adjusted, tmp_path):
    _, qmodel = adjusted
    x = images(8, 3)
    for variable, low, high in cal.alpha_bounds(qmodel):  # off neutral, within bounds
        rng = np.random.default_rng(len(variable.path))
        variable.assign(rng.uniform(low, high, variable.shape).astype(np.float32))
    qmodel.save(tmp_path / "adj.keras")
    loaded = keras.saving.load_model(tmp_path / "adj.keras", compile=False)
    assert type(loaded.get_layer("stem").quantizer) is AdjustableWeightQuantizer
    assert np.asarray(loaded(x)).tobytes() == np.asarray(qmodel(x)).tobytes()
    assert thresholds(loaded) == thresholds(qmodel)
    bits = loaded.get_layer("stem").quantizer.channel_bits()
    assert np.all((bits >= 2) & (bits <= 8))


def test_gradients_from_the_output_reach_every_alpha_and_beta(adjusted):
    _, qmodel = adjusted
    for variable, _, _ in cal.alpha_bounds(qmodel):
        variable.assign(np.ones(variable.shape, np.float32) * 0.7)  # 6 bits (beta), 0.7 T
    x = tf.constant(images(16, 4))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(qmodel(x) ** 2)
    variables = cal.alpha_variables(qmodel)
    grads = tape.gradient(loss, variables)
    for v, g in zip(variables, grads):
        assert g is not None, v.path
        g = np.asarray(g)
        assert np.all(np.isfinite(g)) and np.any(g != 0), v.path


def test_a_config_default_selects_it_too(adjusted):
    model, qmodel = adjusted
    config = QuantConfig({"weight_quantizer": "adjustable", "activation_quantizer": "adjustable"})
    other = fake_quant_model(model, config=config)
    assert [l.get_config() for l in other.layers] == [l.get_config() for l in qmodel.layers]


def test_asymmetric_activations_are_refused():
    from quantflow.errors import QuantflowError

    with pytest.raises(QuantflowError, match="symmetric only"):
        AdjustableActivationQuantizer(bits=8, symmetric=False)
