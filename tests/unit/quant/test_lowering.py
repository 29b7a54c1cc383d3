"""quantflow.quant.lowering: one plan of what folds and fuses, read by the fake-quant
transform and the MicroNet counter; for every zoo model the layers the counter counts are
the layers the transform quantizes, and what one folds or fuses the other drops."""

import pytest

keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

from quantflow.models.registry import build_model  # noqa: E402
from quantflow.quant import lowering  # noqa: E402
from quantflow.quant.graph import flatten_graph  # noqa: E402
from quantflow.quant.layers import QAdd, QConv2D, QDense, QDepthwiseConv2D  # noqa: E402
from quantflow.quant.micronet.count import ACTIVATION_OPS, MAC_KINDS, count_model  # noqa: E402
from quantflow.quant.transform import fake_quant_model  # noqa: E402

ZOO = {
    "tiny_mobilenet": {"width": 0.25, "head": 32},
    "mobilenet_v2": {"alpha": 0.35, "weights": "none"},
    "mnasnet_a1": {"depth_multiplier": 0.5, "weights": "none"},
    "efficientnet_b0": {"weights": "none"},
    "resnet50": {"weights": "none"},
}


def both_views(model, qmodel=None):
    """(counter, transform) views: weighted layers, and the float layers folded or fused
    into them."""
    counts = count_model(model)
    weighted = {r.name for r in counts if r.kind in MAC_KINDS}
    absorbed = {
        p for r in counts if r.kind in MAC_KINDS for p in r.folded if p not in lowering.ACTIVATIONS
    }
    qmodel = qmodel or fake_quant_model(model)
    quantized = {
        layer.name
        for layer in qmodel.layers
        if isinstance(layer, (QConv2D, QDepthwiseConv2D, QDense))
    }
    float_names = {
        node.path
        for node in flatten_graph(model).nodes
        if isinstance(node.layer, (layers.BatchNormalization, layers.ReLU, layers.Activation))
    }
    kept = {layer.name for layer in qmodel.layers}
    dropped = {name for name in float_names if name.split("/")[-1] not in kept}
    return (weighted, absorbed), (quantized, dropped)


@pytest.mark.parametrize("arch", list(ZOO))
def test_the_counter_counts_the_layers_the_transform_quantizes(arch):
    model = build_model(arch, (32, 32, 3), 10, **ZOO[arch])
    qmodel = fake_quant_model(model)
    (weighted, absorbed), (quantized, dropped) = both_views(model, qmodel)
    assert {n.split("/")[-1] for n in weighted} == quantized
    # every BatchNormalization folded and ReLU fused into a weighted layer by the counter
    # is gone from the fake-quant model, and nothing else of those kinds is
    assert {n.split("/")[-1] for n in absorbed} == {n.split("/")[-1] for n in dropped}
    # a ReLU the counter fuses into an Add stays in the fake-quant graph, reading the sum
    # with no quantizer in between (TFLite's ADD with a fused RELU)
    fused_into_merges = [
        p for r in count_model(model) if r.kind in ("add", "multiply") for p in r.folded
    ]
    for path in fused_into_merges:
        source = qmodel.get_layer(path.split("/")[-1]).input._keras_history.operation
        assert isinstance(source, (layers.Add, layers.Multiply, layers.Subtract, QAdd)), path


def conv_model(*after, activation=None):
    x = inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, activation=activation, name="conv")(x)
    for layer in after:
        x = layer(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inp, layers.Dense(3, name="logits")(x))


@pytest.mark.parametrize(
    "activation, after, folded",
    [
        # BN then ReLU6: both go into the conv
        (None, [layers.BatchNormalization(name="bn"), layers.ReLU(6.0, name="act")], ["bn", "act"]),
        # ReLU with another ceiling: no TFLite fused activation, an op of its own
        (None, [layers.ReLU(4.0, name="ceiling")], []),
        # after the conv's own ReLU a BatchNormalization does not fold (it runs as MUL and ADD)
        ("relu", [layers.BatchNormalization(name="bn")], []),
    ],
)
def test_what_folds_and_fuses(activation, after, folded):
    model = conv_model(*after, activation=activation)
    plan = lowering.Plan(flatten_graph(model))
    nodes = flatten_graph(model).nodes
    conv = next(i for i, n in enumerate(nodes) if n.path == "conv")
    got = [nodes[i].path for i in (plan.ops[conv].bn, plan.ops[conv].fused) if i is not None]
    assert got == folded and not plan.ops[conv].split
    (weighted, absorbed), (quantized, dropped) = both_views(model)
    assert weighted == quantized and absorbed == set(folded)


def test_a_leaky_relu_activation_is_counted_and_quantized_as_its_own_op():
    model = conv_model(activation="leaky_relu")
    plan = lowering.Plan(flatten_graph(model))
    assert plan.ops[0].activation == "leaky_relu" and plan.ops[0].split
    counts = count_model(model)
    assert [r.kind for r in counts][:2] == ["conv", "activation"]
    qmodel = fake_quant_model(model)  # the transform lowers it too (it used to refuse)
    assert any(
        getattr(layer, "activation", None) is keras.activations.leaky_relu
        for layer in qmodel.layers
    )


def test_every_activation_has_a_cost():
    assert set(ACTIVATION_OPS) == set(lowering.ACTIVATIONS) - {"linear"}
