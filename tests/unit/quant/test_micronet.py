"""quantflow.quant.micronet: counts of tiny models worked out by hand, the score's arithmetic
(32 bits -> 2.0, 8 bits -> 0.5, per-channel bits, max(weight, activation) bits per
multiplication), references, errors, and MobileNetV2 against Keras's own parameter count."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import layers

from quantflow.errors import QuantflowError
from quantflow.quant.micronet.score import (
    BIAS_BITS,
    MICRONET_IMAGENET,
    REFERENCES,
    activation_tensors,
    reference_counts,
    score,
    weight_layers,
)
from quantflow.quant.micronet.count import LayerCount, count_model


def by_name(counts):
    return {c.name: c for c in counts}


# --------------------------------------------------------------------------- model 1


@pytest.fixture(scope="module")
def single_conv():
    """Input 4x4x2 -> Conv2D(3 filters, 3x3, valid, bias) -> 2x2x3.

    weights 3*3*2*3 = 54, bias 3: P = 57.
    MACs: 2*2 positions * 3 filters * (3*3*2 = 18) = 216 -> F = 2 * 216 = 432.
    Each (filter o, input channel i) pair: 3*3 taps * 2*2 positions = 36 MACs."""
    x = keras.Input((4, 4, 2), name="x")
    y = layers.Conv2D(3, 3, name="conv")(x)
    return count_model(keras.Model(x, y))


def test_single_conv_counts(single_conv):
    (c,) = single_conv
    assert (c.name, c.kind, c.layer) == ("conv", "conv", "Conv2D")
    assert c.weight_shape == [3, 3, 2, 3]
    assert (c.weight_channels, c.weights_per_channel, c.bias) == (3, 18, 3)
    assert (c.parameters, c.pair_macs, c.multiplications, c.additions) == (57, 36, 216, 216)
    assert c.inputs == [{"tensor": "x", "channels": 2, "elements": 16, "view_channels": 2}]
    assert (c.output, c.output_channels, c.output_elements) == ("conv", 3, 4)
    assert reference_counts(single_conv) == {"p_ref": 57.0, "f_ref": 432.0}


def test_float_model_scores_two_and_int8_one_half(single_conv):
    s32 = score(single_conv, 32, 32)
    assert s32["score"] == 2.0
    assert (s32["parameter_storage"], s32["operations"]) == (57.0, 432.0)
    assert (s32["parameter_count"], s32["operation_count"]) == (57, 432)
    assert (s32["multiplications"], s32["additions"]) == (216, 216)
    # 8-bit weights, activations AND biases (the default bias bits): everything at 8/32
    s8 = score(single_conv, 8, 8, bias_bits=BIAS_BITS)
    assert s8["score"] == 0.5
    assert (s8["parameter_score"], s8["operation_score"]) == (0.25, 0.25)
    # TFLite's int8: int32 biases (the default): storage (54*8 + 3*32)/32 = 16.5
    tflite = score(single_conv, 8, 8)
    assert tflite["parameter_storage"] == 16.5
    assert tflite["operations"] == 108.0  # 432 * 8/32: biases cost no operation
    assert tflite["score"] == pytest.approx(16.5 / 57 + 0.25, rel=1e-12)
    assert tflite["layers"][0]["bias_bits"] == 32.0


def test_per_channel_weight_bits(single_conv):
    """Filters at 2, 4, 8 bits, input at 4 bits, biases at 32.
    storage: 18 * (2 + 4 + 8) / 32 + 3 = 7.875 + 3 = 10.875
    ops: each filter's 72 MACs at max(w_o, 4) = 4, 4, 8: 2 * 72 * 16 / 32 = 72."""
    s = score(single_conv, {"conv": [2, 4, 8]}, 4)
    assert s["parameter_storage"] == 10.875
    assert s["operations"] == 72.0
    assert s["score"] == pytest.approx(10.875 / 57 + 72 / 432, rel=1e-12)
    assert s["mean_weight_bits"] == pytest.approx(14 / 3)
    assert s["mean_activation_bits"] == 4.0
    assert s["layers"][0]["mean_operation_bits"] == pytest.approx(32 * 72 / 432)


def test_multiplication_at_the_larger_of_weight_and_activation_bits(single_conv):
    """Filters at 2, 4, 8 bits; input channels at 2 and 16 bits. Per pair max(w_o, a_i):
    filter 0: 2, 16; filter 1: 4, 16; filter 2: 8, 16 -> sum 62, each pair 36 MACs:
    2 * 36 * 62 / 32 = 139.5."""
    s = score(single_conv, {"conv": [2, 4, 8]}, {"x": [2, 16]})
    assert s["operations"] == 139.5
    # activations above the weights: the activation bits decide, weights do not matter
    assert score(single_conv, 2, 16)["operations"] == 432 * 16 / 32
    assert score(single_conv, 16, 2)["operations"] == 432 * 16 / 32
    # mean activation bits: over the 16 values of each input channel
    assert s["mean_activation_bits"] == 9.0


def test_references(single_conv):
    s = score(single_conv, 32, 32, **MICRONET_IMAGENET)
    assert (s["p_ref"], s["f_ref"]) == (6.9e6, 1170e6)
    assert s["score"] == pytest.approx(57 / 6.9e6 + 432 / 1170e6, rel=1e-12)
    s8 = score(single_conv, 8, 8, bias_bits=8, **REFERENCES["micronet_imagenet"])
    assert s8["score"] == pytest.approx(57 / 4 / 6.9e6 + 432 / 4 / 1170e6, rel=1e-12)
    assert score(single_conv, 32, 32, **REFERENCES["model"])["score"] == 2.0
    # one given, the other the model's own
    s = score(single_conv, 32, 32, p_ref=114)
    assert s["score"] == 1.5 and s["f_ref"] == 432.0


def test_bad_bits_are_clear_errors(single_conv):
    with pytest.raises(
        QuantflowError, match=r"weight_bits\['conv'\]: 2 per-channel bit widths for 3 channels"
    ):
        score(single_conv, {"conv": [4, 8]}, 8)
    with pytest.raises(
        QuantflowError, match=r"activation_bits\['x'\]: 3 per-channel bit widths for 2 channels"
    ):
        score(single_conv, 8, {"x": [8, 8, 8]})
    with pytest.raises(QuantflowError, match="weight_bits: no bits for layer with weights 'conv'"):
        score(single_conv, {}, 8)
    with pytest.raises(QuantflowError, match="activation_bits: no tensor named 'y'"):
        score(single_conv, 8, {"x": 8, "y": 8})
    with pytest.raises(QuantflowError, match="bias_bits: no layer with a bias named 'dense'"):
        score(single_conv, 8, 8, bias_bits={"conv": 32, "dense": 8})
    for bad in (0, 33, True, "8", float("nan"), [[8, 8, 8]]):
        with pytest.raises(QuantflowError, match="weight_bits"):
            score(single_conv, bad, 8)
    for bad in (0, -1.0, "6.9e6", float("inf")):
        with pytest.raises(QuantflowError, match="p_ref must be a positive number"):
            score(single_conv, 8, 8, p_ref=bad)
    with pytest.raises(QuantflowError, match="no layer counts"):
        score([], 8, 8)


def test_counts_are_json(single_conv):
    data = json.loads(json.dumps([c.to_dict() for c in single_conv]))
    assert [LayerCount.from_dict(d) for d in data] == single_conv
    s = score(data, {"conv": [2, 4, 8]}, 4)  # dicts score like LayerCounts
    assert json.loads(json.dumps(s)) == s == score(single_conv, {"conv": [2, 4, 8]}, 4)
    with pytest.raises(QuantflowError, match="not a MicroNet layer count"):
        LayerCount.from_dict({"name": "conv", "macs": 3})


# --------------------------------------------------------------------------- model 2


@pytest.fixture(scope="module")
def mobile_block():
    """Input 5x5x2 -> Conv2D(4, 3x3, same, no bias) + BN + ReLU6 -> 5x5x4
    -> DepthwiseConv2D(3x3, stride 2, valid, no bias) + BN -> 2x2x4 -> GAP -> 4 -> Dense(3).

    conv: weights 3*3*2*4 = 72, folded bias 4;   MACs 5*5 * 4 * 18 = 1800
    dw:   weights 3*3*4 = 36,  folded bias 4;    MACs 2*2 * 4 * 9 = 144
    GAP:  per channel 2*2 - 1 = 3 additions + 1 multiplication: 12 + 4 = 16 operations
    dense: weights 4*3 = 12, bias 3;             MACs 12
    P = 76 + 40 + 15 = 131 (Keras: 155, minus 3 per BN channel: 155 - 3*8)
    F = 2 * (1800 + 144 + 12) + 16 = 3928"""
    x = keras.Input((5, 5, 2), name="x")
    y = layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(x)
    y = layers.BatchNormalization(name="conv_bn")(y)
    y = layers.ReLU(6.0, name="conv_relu")(y)
    y = layers.DepthwiseConv2D(3, strides=2, use_bias=False, name="dw")(y)
    y = layers.BatchNormalization(name="dw_bn")(y)
    y = layers.GlobalAveragePooling2D(name="gap")(y)
    y = layers.Dense(3, name="dense")(y)
    model = keras.Model(x, y)
    return model, count_model(model)


def test_mobile_block_counts(mobile_block):
    model, counts = mobile_block
    assert [(c.name, c.kind) for c in counts] == [
        ("conv", "conv"),
        ("dw", "depthwise"),
        ("gap", "global_avg_pool"),
        ("dense", "dense"),
    ]
    c = by_name(counts)
    assert c["conv"].folded == ["conv_bn", "conv_relu"] and c["dw"].folded == ["dw_bn"]
    assert [(r.parameters, r.bias, r.multiplications, r.additions) for r in counts] == [
        (76, 4, 1800, 1800),
        (40, 4, 144, 144),
        (0, 0, 4, 12),
        (15, 3, 12, 12),
    ]
    assert (c["dw"].groups, c["dw"].pair_macs) == (4, 36)
    assert [(r.inputs[0]["tensor"], r.output) for r in counts] == [
        ("x", "conv"),
        ("conv", "dw"),
        ("dw", "gap"),
        ("gap", "dense"),
    ]
    assert reference_counts(counts) == {"p_ref": 131.0, "f_ref": 3928.0}
    assert model.count_params() - 3 * 8 == 131
    assert weight_layers(counts) == {"conv": 4, "dw": 4, "dense": 3}
    assert activation_tensors(counts) == {"x": 2, "conv": 4, "dw": 4, "gap": 4}


def test_mobile_block_mixed_bits(mobile_block):
    """weights conv 4, dw 8, dense 2; activations x 8, conv 4, dw 6, gap 8; biases 32.
    storage: 72*4/32 + 4 + 36*8/32 + 4 + 12*2/32 + 3 = 9 + 4 + 9 + 4 + 0.75 + 3 = 29.75
    ops: conv 2*1800*max(4, 8)/32 = 900; dw 2*144*max(8, 4)/32 = 72; GAP 16 * 6/32 = 3;
         dense 2*12*max(2, 8)/32 = 6: 981
    mean weight bits (72*4 + 36*8 + 12*2) / 120 = 5; mean activation bits over the
    values read: x 50 at 8, conv 100 at 4, dw 16 at 6, gap 4 at 8: 928 / 170."""
    _, counts = mobile_block
    s = score(
        counts,
        {"conv": 4, "dw": 8, "dense": 2},
        {"x": 8, "conv": 4, "dw": 6, "gap": 8, "dense": 8},  # the logits may be named too
    )
    assert (s["parameter_storage"], s["operations"]) == (29.75, 981.0)
    assert s["score"] == pytest.approx(29.75 / 131 + 981 / 3928, rel=1e-12)
    assert s["mean_weight_bits"] == 5.0
    assert s["mean_activation_bits"] == pytest.approx(928 / 170)
    assert [layer["operations"] for layer in s["layers"]] == [900.0, 72.0, 3.0, 6.0]
    assert [layer["parameter_storage"] for layer in s["layers"]] == [13.0, 13.0, 0.0, 3.75]
    assert score(counts, 32, 32)["score"] == 2.0
    assert score(counts, 8, 8, bias_bits=8)["score"] == 0.5


# --------------------------------------------------------------------------- model 3


@pytest.fixture(scope="module")
def residual():
    """Input 4x4x3 -> Conv2D(3, 1x1, bias) + ReLU (fused) -> Add([input, conv]) + ReLU
    (fused into the ADD) -> Conv2D(2, 1x1, no bias).

    conv: 9 + 3 = 12 parameters, MACs 16 * 3 * 3 = 144
    add:  one addition per output element: 16 * 3 = 48
    head: 6 parameters, MACs 16 * 2 * 3 = 96
    P = 18, F = 2*144 + 48 + 2*96 = 528"""
    x = keras.Input((4, 4, 3), name="x")
    y = layers.Conv2D(3, 1, name="conv")(x)
    y = layers.Activation("relu", name="conv_relu")(y)
    z = layers.Add(name="add")([x, y])
    z = layers.ReLU(name="add_relu")(z)
    z = layers.Conv2D(2, 1, use_bias=False, name="head")(z)
    return count_model(keras.Model(x, z))


def test_residual_add(residual):
    assert [(c.name, c.kind) for c in residual] == [
        ("conv", "conv"),
        ("add", "add"),
        ("head", "conv"),
    ]
    c = by_name(residual)
    assert c["conv"].folded == ["conv_relu"] and c["add"].folded == ["add_relu"]
    assert [t["tensor"] for t in c["add"].inputs] == ["x", "conv"]
    assert (c["add"].output, c["head"].inputs[0]["tensor"]) == ("add_relu", "add_relu")
    assert (c["add"].multiplications, c["add"].additions) == (0, 48)
    assert (c["head"].bias, c["head"].parameters, c["head"].multiplications) == (0, 6, 96)
    assert reference_counts(residual) == {"p_ref": 18.0, "f_ref": 528.0}
    assert score(residual, 32, 32)["score"] == 2.0
    assert score(residual, 8, 8, bias_bits=8)["score"] == 0.5


def test_residual_add_bits_are_the_larger_input_per_channel(residual):
    """x per channel 8, 4, 2; conv 4 -> the add's channels at 8, 4, 4, 16 elements each:
    16 * (8 + 4 + 4) / 32 = 8 operations."""
    s = score(residual, 8, {"x": [8, 4, 2], "conv": 4, "add_relu": 8})
    assert by_name_layers(s)["add"]["operations"] == 8.0
    assert by_name_layers(s)["add"]["mean_operation_bits"] == pytest.approx(16 / 3)


def by_name_layers(result):
    return {layer["name"]: layer for layer in result["layers"]}


# --------------------------------------------------------------------------- more kinds


def test_max_pool_flatten_dense_per_channel_view():
    """Input 4x4x2 -> MaxPooling2D(2) -> 2x2x2 -> Flatten -> 8 -> Dense(2).
    max pool: 3 comparisons per output element, 24 (as additions), on the input's grid
    (the Dense reads tensor "x"); dense: 16 weights + 2 biases, 16 MACs.
    Input bits per channel 2, 8: the flattened feature l is channel l % 2.
    ops: pool 12 per channel at 2 and 8: 12 * 10 / 32 = 3.75; dense with weights at 4:
    per unit 4 features at max(4, 2) = 4 and 4 at 8: 48, two units: 2 * 96 / 32 = 6."""
    x = keras.Input((4, 4, 2), name="x")
    y = layers.MaxPooling2D(2, name="pool")(x)
    y = layers.Flatten(name="flat")(y)
    y = layers.Dense(2, name="dense")(y)
    counts = count_model(keras.Model(x, y))
    pool, dense = counts
    assert (pool.kind, pool.additions, pool.output) == ("max_pool", 24, "x")
    assert dense.inputs == [{"tensor": "x", "channels": 2, "elements": 16, "view_channels": 8}]
    assert (dense.pair_macs, dense.multiplications) == (1, 16)
    assert reference_counts(counts) == {"p_ref": 18.0, "f_ref": 56.0}
    s = score(counts, 4, {"x": [2, 8]})
    assert [layer["operations"] for layer in s["layers"]] == [3.75, 6.0]


def test_preprocessing_and_standalone_activations():
    """Input 2x2x1 -> Rescaling(1/255) -> Conv2D(2, 1x1, sigmoid) -> GAP -> Dense(2, softmax).
    rescaling: one MUL step by 1 constant (the zero offset is dropped): 4 multiplications
    conv: 2 + 2 parameters, 8 MACs; its sigmoid runs alone: 8 elements * 3 = 24
    GAP: 2 channels * (3 additions + 1 multiplication) = 8
    dense: 4 + 2 parameters, 4 MACs; softmax 2 elements * 3 = 6
    P = 1 + 4 + 6 = 11, F = 4 + 16 + 24 + 8 + 8 + 6 = 66"""
    x = keras.Input((2, 2, 1), name="x")
    y = layers.Rescaling(1 / 255, name="rescale")(x)
    y = layers.Conv2D(2, 1, activation="sigmoid", name="conv")(y)
    y = layers.GlobalAveragePooling2D(name="gap")(y)
    y = layers.Dense(2, activation="softmax", name="dense")(y)
    counts = count_model(keras.Model(x, y))
    assert [(c.name, c.kind, c.inputs[0]["tensor"], c.output) for c in counts] == [
        ("rescale", "scale", "x", "rescale"),
        ("conv", "conv", "rescale", "conv_linear"),
        ("conv_sigmoid", "activation", "conv_linear", "conv_sigmoid"),
        ("gap", "global_avg_pool", "conv_sigmoid", "gap"),
        ("dense", "dense", "gap", "dense_linear"),
        ("dense_softmax", "activation", "dense_linear", "dense_softmax"),
    ]
    assert [c.operations for c in counts] == [4, 16, 24, 8, 8, 6]
    assert reference_counts(counts) == {"p_ref": 11.0, "f_ref": 66.0}
    assert weight_layers(counts) == {"rescale": 1, "conv": 2, "dense": 2}
    assert score(counts, 8, 8, bias_bits=8)["score"] == 0.5


def test_unfolded_batch_norm_and_nested_model():
    """A BatchNormalization after an Add cannot be folded: a MUL and an ADD step by 3
    per-channel constants each (6 parameters, 3*3*3 = 27 + 27 operations). The inner
    model is flattened: its layers are named by path."""
    inner_in = keras.Input((3, 3, 3))
    inner = keras.Model(inner_in, layers.Conv2D(3, 1, name="c")(inner_in), name="backbone")
    x = keras.Input((3, 3, 3), name="x")
    y = layers.Add(name="add")([x, inner(x)])
    bn = layers.BatchNormalization(name="bn")
    y = bn(y)
    bn.set_weights(
        [np.array(v, "float32") for v in ([1, 2, 3], [0.5, 0, 1], [0.1, 0.2, 0.3], [1, 1, 1])]
    )
    counts = count_model(keras.Model(x, y))
    assert [(c.name, c.kind, c.parameters, c.operations) for c in counts] == [
        ("backbone/c", "conv", 12, 2 * 81),
        ("add", "add", 0, 27),
        ("bn_mul", "scale", 3, 27),
        ("bn", "shift", 3, 27),
    ]
    assert [c.inputs[0]["tensor"] for c in counts] == ["x", "x", "add", "bn_mul"]
    assert score(counts, 8, 8, bias_bits=8)["score"] == 0.5


def test_a_layer_with_no_int8_form_is_counted_as_float():
    """A float island (quant.transform) counts its weights and one operation per output
    value, at 32 bits whatever the other layers' bits; its output is a tensor of its own."""
    x = keras.Input((8, 3), name="x")
    y = layers.Conv1D(2, 3, name="conv1d")(x)
    y = layers.Activation("gelu", name="act")(y)
    counts = count_model(keras.Model(x, layers.Dense(2, name="fc")(layers.Flatten()(y))))
    assert [(c.name, c.kind, c.parameters, c.operations) for c in counts] == [
        ("conv1d", "float", 3 * 3 * 2 + 2, 6 * 2),
        ("act", "float", 0, 6 * 2),
        ("fc", "dense", 12 * 2 + 2, 2 * 12 * 2),
    ]
    assert counts[1].inputs[0]["tensor"] == "conv1d__float_island"
    at8 = score(counts, 8, 8, bias_bits=8)
    floats = [row for row in at8["layers"] if row["kind"] == "float"]
    assert [row["parameter_storage"] for row in floats] == [20, 0]
    assert [row["operations"] for row in floats] == [12, 12]
    assert at8["operations"] == 24 + 2 * 24 * 8 / 32
    x = keras.Input((4,), name="x")
    with pytest.raises(QuantflowError, match=r"layer 'fc' \(Dense\).*activation 'gelu'"):
        count_model(keras.Model(x, layers.Dense(2, activation="gelu", name="fc")(x)))
    shared = layers.Conv2D(1, 1, name="shared")
    x = keras.Input((2, 2, 1), name="x")
    with pytest.raises(QuantflowError, match="'shared' is called 2 times"):
        count_model(keras.Model(x, shared(shared(x))))


def test_no_tensorflow_at_import():
    code = (
        "import sys, quantflow.quant.micronet; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------- MobileNetV2


def test_mobilenet_v2():
    """keras.applications MobileNetV2(alpha 0.35, 32x32x3, 10 classes). Its convolutions
    have no bias, so folding each BatchNormalization (gamma, beta, mean, variance) leaves
    one bias per channel: P = count_params() - 3 * (BN channels). MACs: about 1.2M (the
    224x224 model's ~59M scaled by (32/224)^2 for the body, plus the 1x1 head)."""
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
    )
    counts = count_model(model)
    bn_channels = sum(
        layer.gamma.shape[0]
        for layer in model.layers
        if isinstance(layer, layers.BatchNormalization)
    )
    totals = reference_counts(counts)
    assert totals["p_ref"] == model.count_params() - 3 * bn_channels
    kinds = [c.kind for c in counts]
    assert kinds.count("scale") == kinds.count("shift") == 0  # every BN folded
    assert kinds.count("add") == 10 and kinds.count("global_avg_pool") == 1
    n_weighted = sum(
        isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense))
        for layer in model.layers
    )
    assert len(weight_layers(counts)) == n_weighted
    macs = sum(c.multiplications for c in counts if c.kind in ("conv", "depthwise", "dense"))
    print(
        f"MobileNetV2 0.35 32x32: {int(totals['p_ref'])} parameters, {macs} MACs, "
        f"{int(totals['f_ref'])} operations"
    )
    assert 0.8e6 < macs < 2e6
    assert score(counts, 32, 32)["score"] == 2.0
    assert score(counts, 8, 8, bias_bits=8)["score"] == 0.5
    s = score(counts, 8, 8, **MICRONET_IMAGENET)
    assert 0 < s["score"] < 0.02


def test_a_model_that_cannot_be_counted_gets_no_score_and_says_why():
    """micronet.json of a model with an uncountable layer: no layers, the reason; the
    summary then leaves its variants' scores out (n/a) instead of failing."""
    from quantflow.quant.micronet.score import counts_record
    from quantflow.report.records import add_scores

    x = keras.Input((8, 3), name="x")
    record = counts_record(keras.Model(x, layers.Dense(2, activation="gelu", name="fc")(x)))
    assert record["layers"] is None and "layer 'fc' (Dense)" in record["unsupported"]
    rows = [{"dataset": "d", "model": "m", "variant": "tflite-int8"}]
    assert "score" not in add_scores(rows, {("d", "m"): record["layers"]})[0]
    good = counts_record(keras.Model(x, layers.Dense(2)(layers.Flatten()(x))))
    assert good["layers"] and good["p_ref"] > 0
