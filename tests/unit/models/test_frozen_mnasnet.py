"""The FAT reference's MNasNet route (quantflow.models.frozen_mnasnet): a TF1 frozen
MNasNet-A1 graph, built here in graph mode with tf.compat.v1 ops from the paper's block
table (a second implementation of the network) and frozen with TensorFlow's own tool, has
its weights extracted into the built-in MNasNet and a plain weights.pickle, which rebuild
the graph's logits; a graph of another width stops at the first op that does not fit."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from quantflow.errors import QuantflowError  # noqa: E402
from quantflow.models.mnasnet import MNASNET_A1_BLOCKS, _make_divisible  # noqa: E402

SHAPE, CLASSES = (32, 32, 3), 7


def tf1_mnasnet(depth: float, seed: int = 0):
    """(frozen GraphDef bytes, input name, output name) of MNasNet-A1 at `depth` with
    random weights and BatchNorm statistics, written with tf.compat.v1 ops."""
    rng = np.random.default_rng(seed)
    v1 = tf.compat.v1
    width = lambda n: _make_divisible(n * depth)  # noqa: E731
    graph = tf.Graph()
    with graph.as_default():

        def var(shape, scale=None):
            scale = scale or 1.0 / np.sqrt(np.prod(shape[:-1]))
            return v1.Variable(rng.normal(0, scale, shape).astype(np.float32))

        def conv(x, cout, k, s, bias=False):
            y = tf.nn.conv2d(x, var((k, k, x.shape[-1], cout)), [1, s, s, 1], "SAME")
            return tf.nn.bias_add(y, var((cout,), 0.1)) if bias else y

        def bn(x, relu=True):
            c = x.shape[-1]
            gamma = v1.Variable(rng.uniform(0.5, 1.5, c).astype(np.float32))
            beta = v1.Variable(rng.normal(0, 0.1, c).astype(np.float32))
            mean = v1.Variable(rng.normal(0, 0.1, c).astype(np.float32))
            variance = v1.Variable(rng.uniform(0.5, 2.0, c).astype(np.float32))
            y, _, _ = v1.nn.fused_batch_norm(
                x, gamma, beta, mean, variance, epsilon=1e-3, is_training=False
            )
            return tf.nn.relu(y) if relu else y

        def depthwise(x, k, s):
            w = var((k, k, x.shape[-1], 1), 1.0 / k)
            return tf.nn.depthwise_conv2d(x, w, [1, s, s, 1], "SAME")

        x = v1.placeholder(tf.float32, (None, *SHAPE), name="input")
        y = bn(conv(x, width(32), 3, 2))
        y = bn(depthwise(y, 3, 1))
        y = bn(conv(y, width(16), 1, 1), relu=False)
        for expansion, k, cout, repeats, stride, se in MNASNET_A1_BLOCKS:
            for r in range(repeats):
                cin, s, block_in = y.shape[-1], stride if r == 0 else 1, y
                if expansion != 1:
                    y = bn(conv(y, cin * expansion, 1, 1))
                y = bn(depthwise(y, k, s))
                if se:
                    z = tf.reduce_mean(y, [1, 2], keepdims=True)
                    z = tf.nn.relu(conv(z, max(1, int(cin * se)), 1, 1, bias=True))
                    y = y * tf.sigmoid(conv(z, y.shape[-1], 1, 1, bias=True))
                y = bn(conv(y, width(cout), 1, 1), relu=False)
                if s == 1 and cin == width(cout):
                    y = y + block_in
        y = tf.reduce_mean(bn(conv(y, 1280, 1, 1)), [1, 2])
        logits = tf.nn.bias_add(tf.matmul(y, var((1280, CLASSES))), var((CLASSES,), 0.1))
        tf.identity(logits, name="logits")
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            frozen = v1.graph_util.convert_variables_to_constants(
                sess, graph.as_graph_def(), ["logits"]
            )
    return frozen.SerializeToString()


def graph_logits(frozen: bytes, x: np.ndarray) -> np.ndarray:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(frozen)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session() as sess:
            return sess.run("logits:0", {"input:0": x})


@pytest.fixture(scope="module")
def frozen(tmp_path_factory):
    path = tmp_path_factory.mktemp("mnasnet") / "mnasnet.pb"
    path.write_bytes(tf1_mnasnet(0.5))
    return path


def test_weights_extracted_rebuild_the_graph_exactly(frozen, tmp_path):
    from quantflow.formats.weights import extract_weights, load_weights, rebuild_model
    from quantflow.formats.weights import save_weights
    from quantflow.models.frozen_mnasnet import graph_weights, mnasnet_from_frozen_graph

    found = graph_weights(frozen)
    kinds = [w.kind for w in found]
    assert kinds[:6] == ["conv", "bn", "depthwise", "bn", "conv", "bn"] and kinds[-1] == "dense"
    x = np.random.default_rng(1).uniform(-1, 1, (6, *SHAPE)).astype(np.float32)
    reference = graph_logits(frozen.read_bytes(), x)
    model = mnasnet_from_frozen_graph(frozen, 0.5, SHAPE)
    assert model.output_shape == (None, CLASSES)
    logits = np.asarray(model(x, training=False))
    np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    save_weights(extract_weights(model), tmp_path / "weights.pickle")
    rebuilt = rebuild_model(load_weights(tmp_path / "weights.pickle"))
    assert np.array_equal(np.asarray(rebuilt(x, training=False)), logits)


def test_a_graph_of_another_width_is_refused_with_the_op_named(frozen):
    from quantflow.models.frozen_mnasnet import mnasnet_from_frozen_graph

    with pytest.raises(QuantflowError, match=r"weighted op 0 .*conv.*depth multiplier 1"):
        mnasnet_from_frozen_graph(frozen, 1.0, SHAPE)
    with pytest.raises(QuantflowError, match="not a frozen TensorFlow graph"):
        bad = frozen.parent / "bad.pb"
        bad.write_bytes(b"\x00not a graph")
        mnasnet_from_frozen_graph(bad, 0.5, SHAPE)


def test_the_zoo_model_starts_from_the_graph_backbone(frozen):
    """weights: mnasnet.pb for the zoo's mnasnet_a1: the backbone holds the graph's
    weights (its pooled features equal the graph's), the head is new."""
    from quantflow.models.keras_apps import build_zoo_model
    from quantflow.models.frozen_mnasnet import mnasnet_from_frozen_graph

    model = build_zoo_model(
        "mnasnet_a1", SHAPE, 4, weights=str(frozen), depth_multiplier=0.5, dropout=0.0
    )
    assert model.output_shape == (None, 4)
    features = model.get_layer("avg_pool").output
    import keras

    pooled = keras.Model(model.inputs, features)
    reference = mnasnet_from_frozen_graph(frozen, 0.5, SHAPE, include_top=False)
    x = np.random.default_rng(2).uniform(0, 255, (3, *SHAPE)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(pooled(x)), np.asarray(reference(x / 127.5 - 1.0)), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(QuantflowError, match="mnasnet_a1 only"):
        build_zoo_model("mobilenet_v2", SHAPE, 4, weights=str(frozen))
