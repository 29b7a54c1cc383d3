"""Adjustable mixed-precision quantization (quantflow.quant.adjustable): the differentiable
score against quantflow.quant.micronet's, training moves bits only under the metric, quant_info
reproduces the score, the packed weights round-trip, the int8 export agrees with its
simulation in LiteRT."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
layers = keras.layers

from quantflow.quant.adjustable.score import ScoreGraph, score_from_quant_info  # noqa: E402
from quantflow.quant.adjustable.settings import (
    Settings,
    _activations,
    _ops,
    build_model,
    calibrate,
)  # noqa: E402
from quantflow.quant.adjustable.train import _variables, train  # noqa: E402
from quantflow.quant.adjustable.export import (
    int8_model,
    packed_weights,
    quantized_kernels,
)  # noqa: E402
from quantflow.formats import bitpack  # noqa: E402
from quantflow.quant.micronet.count import count_model  # noqa: E402
from quantflow.quant.micronet.score import score, uniform_score  # noqa: E402


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    x = keras.Input((8, 8, 1), name="image")
    y = layers.Rescaling(1 / 255.0, name="scale")(x)
    y = layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv")(y)
    y = layers.BatchNormalization(name="bn")(y)
    y = layers.ReLU(6.0, name="relu")(y)
    y = layers.DepthwiseConv2D(3, padding="same", name="dw")(y)
    y = layers.ReLU(name="dw_relu")(y)
    y = layers.Conv2D(8, 1, name="pw", activation="relu")(y)
    y = layers.GlobalAveragePooling2D(name="gap")(y)
    y = layers.Dense(4, name="logits")(y)
    model = keras.Model(x, y, name="small")
    bn = model.get_layer("bn")
    rng = np.random.default_rng(seed)
    bn.moving_mean.assign(rng.normal(size=6).astype(np.float32) * 0.1)
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=6).astype(np.float32))
    return model


def data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, size=(n, 8, 8, 1)).astype(np.float32)
    return images


@pytest.fixture
def setup():
    model = small_model()
    images = data()
    labels = np.argmax(np.asarray(model(images)), axis=1).astype(np.int32)
    settings = Settings(
        images=len(images), batch_size=20, calibration_batches=2, mini_epochs=4, swa_epochs=0
    )
    qmodel = build_model(model, settings)
    calibrate(qmodel, images, settings)
    graph = ScoreGraph(qmodel, count_model(model), reference=settings.reference)
    return model, qmodel, graph, images, labels, settings


def test_every_counted_tensor_has_its_quantizer(setup):
    _, _, graph, *_ = setup
    assert graph.unmatched == []
    assert set(graph.weight_hosts) == {"conv", "dw", "pw", "logits"}


def test_differentiable_score_equals_micronet_score(setup):
    _, qmodel, graph, *_ = setup
    rng = np.random.default_rng(3)
    for trial in range(3):
        for q in [l.quantizer for l in _ops(qmodel)] + [
            a.quantizer for a in _activations(qmodel) if a.fixed_range is None
        ]:
            q.beta.assign(rng.uniform(0.2, 1.0, size=q.channels).astype(np.float32))
        p, f = graph.terms()
        exact = graph.exact()
        assert float(p) == pytest.approx(exact["parameter_score"], rel=1e-5)
        assert float(f) == pytest.approx(exact["operation_score"], rel=1e-5)
        # quant_info alone reproduces it
        again = score_from_quant_info(graph.quant_info(), graph.counts)
        assert again["score"] == pytest.approx(exact["score"], rel=1e-12)


def test_initial_model_scores_like_uniform_int8(setup):
    model, _, graph, *_ = setup
    counts = count_model(model)
    uniform = score(counts, 8, 8, bias_bits=32)
    assert graph.exact()["score"] == pytest.approx(uniform["score"], rel=1e-12)


def test_gradients_reach_alpha_and_beta(setup):
    model, qmodel, graph, images, labels, settings = setup
    weights, betas = _variables(qmodel)
    with tf.GradientTape() as tape:
        tape.watch([v.value for v in weights])
        logits = qmodel(images[:20], training=True)
        loss = tf.reduce_mean(tf.square(logits - model(images[:20])))
        p, f = graph.terms()
        loss = loss + p + f
    grads = tape.gradient(loss, [v.value for v in weights + betas])
    alphas = [v for v in weights if "alpha" in v.name]
    assert alphas and all(g is not None for g in grads)
    assert any(
        float(tf.reduce_sum(tf.abs(g))) > 0 for g, v in zip(grads, weights) if "alpha" in v.name
    )
    assert all(float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads[len(weights) :])


def run(setup, **changes):
    model, qmodel, graph, images, labels, settings = setup
    for k, v in changes.items():
        setattr(settings, k, v)
    split = {
        "images": images[:160],
        "labels": labels[:160],
        "val_images": images[160:],
        "val_labels": labels[160:],
    }
    return train(model, qmodel, graph, split, settings, seed=0, log=lambda *_: None)


def test_metric_weight_zero_keeps_eight_bits(setup):
    result = run(setup, metric_weight=0.0, bits_learning_rate=0.005, tolerance=100.0, epochs=2)
    _, qmodel, graph, *_ = setup
    weight, act = graph.bits()
    assert all(np.all(b == 8) for b in weight.values())
    assert all(np.all(b == 8) for b in act.values())
    assert result["final_score"] == pytest.approx(graph.exact()["score"])


def test_metric_weight_lowers_bits_within_bounds(setup):
    result = run(setup, metric_weight=50.0, bits_learning_rate=0.05, tolerance=100.0, epochs=2)
    _, qmodel, graph, *_ = setup
    weight, act = graph.bits()
    every = np.concatenate(list(weight.values()) + list(act.values()))
    assert every.min() >= 2 and every.max() <= 8 and every.mean() < 7.5
    history = result["history"]
    assert history[-1]["score"] < history[0]["score"]
    assert result["best"]["score"] < history[0]["score"]  # tolerance 100 pp: lowest score
    # bits move only in the mini-epochs that train them
    for before, after in zip(history, history[1:]):
        if not after["bits_trained"]:
            assert after["score"] == before["score"]


def test_packed_weights_round_trip(setup, tmp_path):
    _, qmodel, graph, *_ = setup
    rng = np.random.default_rng(5)
    for layer in _ops(qmodel):
        layer.quantizer.beta.assign(
            rng.uniform(0.25, 1.0, layer.quantizer.channels).astype(np.float32)
        )
    packed = packed_weights(qmodel, {"model": "small"})
    path = tmp_path / "weights.packed"
    bitpack.save_packed(path, packed)
    loaded = bitpack.load_packed(path)
    kernels = quantized_kernels(qmodel)
    for name, (kernel, step, bits) in kernels.items():
        np.testing.assert_array_equal(loaded.weights(f"{name}/kernel"), kernel)
    # the payload is the weight storage the score counts
    weight, _ = graph.bits()
    counts = {c.name: c for c in graph.counts}
    expected_bits = sum(
        float(np.sum(weight[n])) * counts[n].weights_per_channel for n in graph.weight_hosts
    )
    assert loaded.payload_bits == expected_bits


def test_int8_export_agrees_with_its_simulation(setup, tmp_path):
    from quantflow.deploy.check import check_activation_grids
    from quantflow.deploy.convert import convert, save
    from quantflow.deploy.int4 import int4_kernels, store_int4
    from quantflow.deploy.litert import TFLiteRunner

    model, qmodel, graph, images, *_ = setup
    rng = np.random.default_rng(6)
    for layer in _ops(qmodel):
        layer.quantizer.beta.assign(
            rng.uniform(0.3, 1.0, layer.quantizer.channels).astype(np.float32)
        )
    q8 = int8_model(model, qmodel)
    flatbuffer = store_int4(convert(q8, "int8", images[:16]), int4_kernels(q8))
    path = tmp_path / "m.tflite"
    save(flatbuffer, path)
    runner = TFLiteRunner(path, 1)
    out = runner.scores(runner.run(runner.prepare(images[:64])))
    sim = np.asarray(q8(images[:64]))
    scale = float(runner.output["quantization"][0])
    assert np.max(np.abs(out - sim)) <= scale * 1.01
    assert check_activation_grids(q8, str(path)) == []
    kernels = quantized_kernels(qmodel)
    # the simulation's kernels are the adjustable model's quantized kernels, exactly
    for layer in _ops(q8):
        np.testing.assert_allclose(
            np.asarray(layer.quantized_kernel()), kernels[layer.name][0], rtol=0, atol=1e-7
        )


def test_layers_at_most_4_bits_are_stored_as_int4(setup, tmp_path):
    """The deployable file: `conv` (every channel 2..4 bits) and `logits` (all 3 bits) as
    INT4, each channel on its own grid (a 2-bit channel's codes within +-1, a 3-bit one's
    within +-3); `dw` and `pw` (some channels above 4 bits) as int8; LiteRT's outputs equal
    the simulation's within one output step, and the deployed score counts 4 and 8 bits."""
    from quantflow.deploy.convert import convert, save
    from quantflow.deploy.int4 import int4_kernels, store_int4, unpack_int4, weight_storage
    from quantflow.deploy.litert import TFLiteRunner
    from ai_edge_litert.tools import flatbuffer_utils

    model, qmodel, graph, images, *_ = setup
    bits = {"conv": [2, 3, 4, 4, 3, 2], "dw": [3, 5, 8, 4, 6, 2], "pw": [4] * 7 + [5]}
    bits["logits"] = [3, 3, 3, 3]
    for layer in _ops(qmodel):
        q = layer.quantizer
        q.beta.assign(np.asarray(bits[layer.name], np.float32) / q.bits)
        assert q.channel_bits().tolist() == bits[layer.name]
    q8 = int8_model(model, qmodel)
    assert sorted(k.layer for k in int4_kernels(q8)) == ["conv", "logits"]
    flatbuffer = store_int4(convert(q8, "int8", images[:16]), int4_kernels(q8))
    storage = weight_storage(flatbuffer)
    assert (storage["int4"], storage["int8"]) == (2, 2)
    path = tmp_path / "m.tflite"
    save(flatbuffer, path)
    runner = TFLiteRunner(path, 1)
    out = runner.scores(runner.run(runner.prepare(images[:64])))
    sim = np.asarray(q8(images[:64]))
    assert np.max(np.abs(out - sim)) <= float(runner.output["quantization"][0]) * 1.01
    # each INT4 channel's codes stay within its own bits' levels
    tfl = flatbuffer_utils.read_model(str(path))
    graph_ = tfl.subgraphs[0]
    found = {}
    for tensor in graph_.tensors:
        if tensor.type == 17:  # INT4
            codes = unpack_int4(tfl, tensor)
            axis = tensor.quantization.quantizedDimension
            found[codes.shape[axis]] = (
                np.abs(np.moveaxis(codes, axis, 0)).reshape(codes.shape[axis], -1).max(1)
            )
    np.testing.assert_array_equal(found[6], [1, 3, 7, 7, 3, 1])  # conv
    assert found[4].max() <= 3  # logits at 3 bits
    # the deployed score: conv and logits at 4 bits, dw and pw at 8, activations at 8
    deployed = graph.deployed()
    weight, act = graph.bits()
    stored = {k: np.full_like(v, 4.0 if v.max() <= 4 else 8.0) for k, v in weight.items()}
    expected = score(
        graph.counts,
        stored,
        {k: np.full_like(v, 8.0) for k, v in act.items()},
        bias_bits=graph.bias_bits,
        p_ref=graph.p_ref,
        f_ref=graph.f_ref,
    )
    assert deployed["score"] == pytest.approx(expected["score"])


def test_deployment_aware_search_moves_mostly_4_bit_layers_to_int4(setup):
    from quantflow.quant.adjustable.storage import int4_layers, snap_to_int4

    _, qmodel, graph, *_ = setup
    ops = {layer.name: layer.quantizer for layer in _ops(qmodel)}
    ops["pw"].beta.assign(np.asarray([4] * 7 + [5], np.float32) / 8)  # 7 of 8 <= 4 bits
    ops["dw"].beta.assign(np.asarray([3, 4, 4, 5, 6, 7], np.float32) / 8)  # half
    ops["logits"].beta.assign(np.asarray([2, 3, 4, 4], np.float32) / 8)  # all
    assert int4_layers(qmodel) == ["logits"]
    before = graph.deployed()["score"]
    assert snap_to_int4(qmodel, 0.85) == ["pw", "logits"]
    assert ops["pw"].channel_bits().tolist() == [4] * 8
    assert ops["logits"].channel_bits().tolist() == [4] * 4  # the spare levels are free
    assert ops["dw"].channel_bits().tolist() == [3, 4, 4, 5, 6, 7]
    assert sorted(int4_layers(qmodel)) == ["logits", "pw"]
    assert graph.deployed()["score"] < before
    assert snap_to_int4(qmodel, 0.85) == []  # once in, for good
    # training keeps them there, and picks its checkpoint by the deployed score
    result = run(setup, metric_weight=50.0, bits_learning_rate=0.05, tolerance=100.0, epochs=1)
    assert ops["pw"].channel_bits().tolist() == [4] * 8
    best = result["best"]
    assert best["deployed_score"] == min(r["deployed_score"] for r in result["history"])


def test_saved_model_keeps_bit_bounds_and_outputs(setup, tmp_path):
    import quantflow.quant.layers  # noqa: F401 (registers the layers)

    model, _, _, images, _, _ = setup
    settings = Settings(min_bits=3, max_bits=6, calibration_batches=2)
    qmodel = build_model(model, settings)
    calibrate(qmodel, images, settings)
    layer = _ops(qmodel)[0]
    layer.quantizer.beta.assign(np.full(layer.quantizer.channels, 0.1, np.float32))
    assert set(layer.quantizer.channel_bits().tolist()) == {3}  # clipped at min_bits
    path = tmp_path / "adj.keras"
    qmodel.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    q = _ops(loaded)[0].quantizer
    assert (q.min_bits, q.max_bits) == (3, 6)
    np.testing.assert_array_equal(np.asarray(loaded(images[:8])), np.asarray(qmodel(images[:8])))


def test_micronet_imagenet_references(setup):
    model, qmodel, _, *_ = setup
    graph = ScoreGraph(qmodel, count_model(model), reference="micronet_imagenet")
    assert (graph.p_ref, graph.f_ref) == (6.9e6, 1170e6)
    info = graph.quant_info()
    exact = graph.exact()
    assert score_from_quant_info(info, graph.counts)["score"] == exact["score"]
    own = uniform_score(graph.counts, 8, 8, input_bits=8)
    # the same storage and operations over other references
    assert exact["parameter_storage"] == pytest.approx(own["parameter_storage"])
    assert exact["score"] == pytest.approx(
        own["parameter_storage"] / 6.9e6 + own["operations"] / 1170e6
    )
