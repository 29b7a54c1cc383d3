"""The quantization core's design seams (quantflow.quant): the per-layer config with
overrides by layer-name pattern, the quantizer interface and registry, and a golden
fake-quant model saved by the code before the split into the package."""

import numpy as np
import pytest

from conftest import REPO
from quantflow.errors import QuantflowError
from quantflow.quant.config import LayerQuant, QuantConfig
from quantflow.quant.schemes import parse_scheme

DATA = REPO / "tests" / "data"


# --------------------------------------------------------------------------- config (no TF)


def test_default_config_is_the_scheme():
    config = QuantConfig.from_scheme("w4a8-asym-pt")
    assert config.default == LayerQuant(
        weight_bits=4, activation_bits=8, per_channel=False, symmetric=False
    )
    assert config.for_layer("anything") == config.default
    assert QuantConfig.from_scheme(parse_scheme("w8a8-sym-pc")).default == LayerQuant()
    assert QuantConfig.from_dict(config.to_dict()) == config


def test_overrides_by_pattern_apply_in_order():
    config = QuantConfig.from_scheme(
        "w4a8-sym-pc",
        overrides={
            "logits": {"weight_bits": 8},
            "block*_dw": {"per_channel": False, "weight_bits": 6},
            "block2_*": {"weight_bits": 5},  # later: wins over block*_dw for block2_dw
            "backbone/*": {"activation_bits": 16},  # by path in the flattened graph
        },
    )
    assert config.for_layer("logits").weight_bits == 8
    assert config.for_layer("logits_2") == config.default  # a glob, not a prefix
    dw1 = config.for_layer("block1_dw")
    assert (dw1.weight_bits, dw1.per_channel, dw1.activation_bits) == (6, False, 8)
    dw2 = config.for_layer("block2_dw")
    assert (dw2.weight_bits, dw2.per_channel) == (5, False)
    assert config.for_layer("block2_pw").weight_bits == 5
    assert config.for_layer("conv", "backbone/conv").activation_bits == 16
    assert config.for_layer("conv").activation_bits == 8
    assert config.matching("block2_dw") == ["block*_dw", "block2_*"]
    assert config.unmatched([("logits", "logits"), ("block1_dw", "block1_dw")]) == [
        "block2_*",
        "backbone/*",
    ]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"logits": {"weight_bit": 8}}, "unknown setting 'weight_bit'"),
        ({"logits": {"weight_bits": 1}}, "weight_bits must be a whole number from 2 to 16"),
        ({"logits": {"activation_bits": 8.0}}, "activation_bits must be a whole number"),
        ({"logits": {"per_channel": "yes"}}, "per_channel must be true or false"),
        ({"logits": 8}, "expected a mapping"),
        ({"": {"weight_bits": 8}}, "layer-name glob"),
    ],
)
def test_bad_overrides_name_the_setting(overrides, message):
    with pytest.raises(QuantflowError, match=message) as error:
        QuantConfig.from_scheme("w8a8-sym-pc", overrides)
    assert "''" in str(error.value) or "logits" in str(error.value)


# --------------------------------------------------------------------------- with models

keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

from quantflow.quant.calibrate import (
    activation_quantizers,
    alpha_bounds,
    calibrate,
    thresholds,
    weight_quantizers,
)  # noqa: E402
from quantflow.quant.transform import fake_quant_model  # noqa: E402
from quantflow.quant.quantizers.fat import FatWeightQuantizer
from quantflow.quant.quantizers.base import Quantizer
from quantflow.quant.registry import quantizer_class, register_quantizer


def small_model():
    """Conv + BN + ReLU6, depthwise, Add, pooling and a Dense head, with fixed weights."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 1), name="image")
    x = layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = layers.Conv2D(4, 3, padding="same", name="stem")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    y = layers.DepthwiseConv2D(3, padding="same", name="block1_dw")(x)
    y = layers.Conv2D(4, 1, name="block1_pw")(y)
    x = layers.Add(name="add")([x, y])
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(3, name="logits")(x), name="small")


def images(n=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 1)).astype(np.float32)


def quantized(model, **kwargs):
    qmodel = fake_quant_model(model, **kwargs)
    calibrate(qmodel, images(32, 1), 2)
    return qmodel


def test_default_config_reproduces_the_scheme_exactly():
    model, x = small_model(), images()
    for name in ("w8a8-sym-pc", "w4a8-asym-pt", "w6a6-sym-pc"):
        scheme = parse_scheme(name)
        reference = quantized(model, **scheme)
        for kwargs in (
            {"config": QuantConfig.from_scheme(name)},
            {"config": QuantConfig.from_scheme(name).to_dict()},
            {**scheme, "overrides": {"*": {"weight_bits": scheme["weight_bits"]}}},
        ):
            other = quantized(model, **kwargs)
            assert [l.get_config() for l in other.layers] == [
                l.get_config() for l in reference.layers
            ]
            assert np.asarray(other(x)).tobytes() == np.asarray(reference(x)).tobytes()
            assert thresholds(other) == thresholds(reference)


def test_overrides_change_only_the_matched_layers():
    model = small_model()
    qmodel = quantized(
        model,
        weight_bits=4,
        overrides={
            "logits": {"weight_bits": 8},
            "block1_*": {"per_channel": False},
            "pool": {"activation_bits": 16},
        },
    )
    ops = {l.name: l for l in weight_quantizers(qmodel)}
    assert {n: (l.bits, l.per_channel) for n, l in ops.items()} == {
        "stem": (4, True),
        "block1_dw": (4, False),
        "block1_pw": (4, False),
        "logits": (8, True),
    }
    acts = {l.name: l.bits for l in activation_quantizers(qmodel)}
    assert acts.pop("pool_quant") == 16
    assert set(acts.values()) == {8}
    info = thresholds(qmodel)
    assert np.ndim(info["block1_dw/kernel"]["t_max"]) == 0
    assert len(info["stem/kernel"]["t_max"]) == 4
    # the TFLite-exact integer path stays on where the grids are at most 8 bits
    assert ops["logits"]._input_range is None  # its input (pool) is 16-bit: float arithmetic
    assert ops["block1_pw"]._input_range is not None


def test_an_override_matching_no_layer_is_an_error():
    with pytest.raises(QuantflowError, match=r"\['logit'\] match no layer"):
        fake_quant_model(small_model(), overrides={"logit": {"weight_bits": 8}})
    with pytest.raises(QuantflowError, match="either `config` or the scheme"):
        fake_quant_model(small_model(), weight_bits=4, config=QuantConfig())


def test_every_quantizer_implements_the_interface():
    qmodel = quantized(small_model(), symmetric=False)
    hosts = activation_quantizers(qmodel) + weight_quantizers(qmodel)
    owned = []
    for host in hosts:
        q = host.quantizer
        assert isinstance(q, Quantizer) and q.bits == host.bits
        lo, hi = (np.asarray(v) for v in q.quant_range())
        if q.kind == "weight":
            channels = int(host.bias.shape[0])
            assert q.per_channel and lo.shape == hi.shape == (channels,)
            assert np.all(hi > 0) and np.array_equal(lo, -hi)
            assert np.asarray(host.weight_scale()).shape == (channels,)
        else:
            assert q.kind == "activation" and lo.shape == hi.shape == ()
            assert lo <= 0.0 <= hi
        assert q.describe()["kind"] == q.kind
        for variable, low, high in q.alpha_bounds():
            assert low < high and any(variable is v for v in host.trainable_variables)
        owned += q.trainable_variables
    # the quantizers' variables are the model's only trainable ones (owned by the hosts)
    assert {v.path for v in owned} == {v.path for v in qmodel.trainable_variables}
    assert quantizer_class("weight", "fat") is FatWeightQuantizer
    with pytest.raises(QuantflowError, match="unknown weight quantizer 'nope'"):
        quantizer_class("weight", "nope")


@register_quantizer("weight", "test_frozen")
class FrozenWeights(FatWeightQuantizer):
    """FAT weights without trainable thresholds: T = max|W| always."""

    def alpha_bounds(self):
        return []


def test_a_registered_quantizer_plugs_in_by_config(tmp_path):
    model, x = small_model(), images()
    qmodel = quantized(model, overrides={"block1_*": {"weight_quantizer": "test_frozen"}})
    ops = {l.name: l for l in weight_quantizers(qmodel)}
    assert type(ops["block1_dw"].quantizer) is FrozenWeights
    assert type(ops["stem"].quantizer) is FatWeightQuantizer
    bounded = {id(v) for v, _, _ in alpha_bounds(qmodel)}
    assert id(ops["block1_dw"].alpha) not in bounded and id(ops["stem"].alpha) in bounded
    # same numbers as FAT at neutral thresholds; saved and reloaded with its name
    plain = quantized(model)
    assert np.asarray(qmodel(x)).tobytes() == np.asarray(plain(x)).tobytes()
    assert ops["block1_dw"].get_config()["weight_quantizer"] == "test_frozen"
    assert "weight_quantizer" not in ops["stem"].get_config()
    qmodel.save(tmp_path / "q.keras")
    loaded = keras.saving.load_model(tmp_path / "q.keras", compile=False)
    assert type(loaded.get_layer("block1_dw").quantizer) is FrozenWeights
    assert np.asarray(loaded(x)).tobytes() == np.asarray(qmodel(x)).tobytes()


def test_a_model_saved_before_the_split_loads_and_computes_the_same():
    """tests/data/fakequant_wrapped_w4a8_asym.keras: tests/unit/quant/test_fakequant.py's wrapped
    model (nested backbone, Rescaling, swish, SE, residual Add + ReLU6, Concatenate), 4-bit
    weights, asymmetric activations, calibrated and its alphas set off neutral, saved by
    quantflow/fakequant.py as it was before quantflow/quant existed (commit 34cc877), with
    that code's logits on 32 images. The layers keep their registered names and variable
    order, so it loads; its 4-bit layers now compute as LiteRT's INT4 kernels do (issue 19:
    the bias on the 4-bit step's grid, the built-in kernels' two roundings), so its logits
    are that code's within one output step, and the same top-1."""
    golden = np.load(DATA / "fakequant_wrapped_w4a8_asym.npz")
    qmodel = keras.saving.load_model(DATA / "fakequant_wrapped_w4a8_asym.keras", compile=False)
    kinds = {type(l).__name__ for l in qmodel.layers}
    assert {"ActivationQuant", "QConv2D", "QDepthwiseConv2D", "QDense", "QAffine", "QAdd"} <= kinds
    assert all(not q.symmetric for q in activation_quantizers(qmodel))
    logits = np.asarray(qmodel(golden["images"].astype(np.float32), training=False))
    step = qmodel.get_layer("logits").output_scale
    assert np.abs(logits - golden["logits"]).max() <= step * 1.001
    assert np.array_equal(logits.argmax(1), golden["logits"].argmax(1))
