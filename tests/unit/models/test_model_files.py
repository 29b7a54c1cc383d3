"""The user's own model in the form their tools wrote (quantflow.models.user): .keras, Keras 2
.h5, float .tflite, SavedModel directory, TF1 frozen graph .pb, each written by TensorFlow's
own exporters, read back as a Keras model whose logits equal the source's."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
layers = keras.layers

from quantflow.errors import QuantflowError  # noqa: E402
from quantflow.models.registry import model_from_spec  # noqa: E402
from quantflow.models.user import frozen_graph_io, read_model_file  # noqa: E402

SHAPE = (16, 16, 3)


def small_model():
    keras.utils.set_random_seed(2)
    x = keras.Input(SHAPE, name="image")
    y = layers.Rescaling(1 / 127.5, offset=-1.0)(x)
    y = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization(momentum=0.9)(y)
    y = layers.ReLU(6.0)(y)
    y = layers.DepthwiseConv2D(3, padding="same")(y)
    y = layers.ReLU()(y)
    y = layers.GlobalAveragePooling2D()(y)
    model = keras.Model(x, layers.Dense(5, name="logits")(y))
    bn = model.layers[3]
    rng = np.random.default_rng(0)
    bn.moving_mean.assign(rng.normal(0, 0.1, 8).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 2, 8).astype(np.float32))
    return model


def images(n=16):
    return np.random.default_rng(1).uniform(0, 255, (n, *SHAPE)).astype(np.float32)


def assert_same_logits(model, reference, rtol=1e-4):
    got, want = np.asarray(model(images(), training=False)), np.asarray(reference)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= rtol * np.abs(want).max()


@pytest.fixture(scope="module")
def source():
    model = small_model()
    return model, np.asarray(model(images(), training=False))


def test_keras_and_h5_files(source, tmp_path):
    model, logits = source
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m.h5")  # Keras' legacy HDF5 format: what Keras 2 wrote
    assert_same_logits(read_model_file(tmp_path / "m.keras", "keras_file"), logits, 0)
    assert_same_logits(read_model_file(tmp_path / "m.h5", "h5_file"), logits, 1e-6)


def test_tflite_file(source, tmp_path):
    from quantflow.deploy.convert import convert

    model, logits = source
    (tmp_path / "m.tflite").write_bytes(convert(model, "fp32"))
    rebuilt = read_model_file(tmp_path / "m.tflite", "tflite_file")
    assert not any(type(layer).__name__ == "Lambda" for layer in rebuilt.layers)
    assert_same_logits(rebuilt, logits)


def test_saved_model_directory(source, tmp_path):
    model, logits = source
    model.export(str(tmp_path / "saved"), verbose=False)
    assert_same_logits(read_model_file(tmp_path / "saved", "saved_model"), logits)
    with pytest.raises(QuantflowError, match="not a SavedModel directory"):
        read_model_file(tmp_path, "saved_model")


def frozen_graph(path):
    """A TF1-style graph built in graph mode (placeholder, variables, conv2d, fused batch
    norm, depthwise, matmul), frozen with TF's own tool; returns its logits on images()."""
    graph = tf.Graph()
    rng = np.random.default_rng(3)
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, *SHAPE), name="input")
        w = tf.compat.v1.Variable(rng.normal(0, 0.1, (3, 3, 3, 8)).astype(np.float32))
        y = tf.nn.conv2d(x / 255.0, w, strides=2, padding="SAME")
        scale = tf.compat.v1.Variable(rng.uniform(0.5, 1.5, 8).astype(np.float32))
        offset = tf.compat.v1.Variable(rng.normal(0, 0.1, 8).astype(np.float32))
        mean = tf.compat.v1.Variable(rng.normal(0, 0.1, 8).astype(np.float32))
        var = tf.compat.v1.Variable(rng.uniform(0.5, 2, 8).astype(np.float32))
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            y, scale, offset, mean=mean, variance=var, is_training=False
        )
        y = tf.nn.relu6(y)
        dw = tf.compat.v1.Variable(rng.normal(0, 0.1, (3, 3, 8, 1)).astype(np.float32))
        y = tf.nn.relu(tf.nn.depthwise_conv2d(y, dw, [1, 1, 1, 1], "SAME"))
        y = tf.reduce_mean(y, axis=[1, 2])
        fc = tf.compat.v1.Variable(rng.normal(0, 0.3, (8, 5)).astype(np.float32))
        logits = tf.identity(tf.matmul(y, fc), name="logits")
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                sess, graph.as_graph_def(), ["logits"]
            )
            out = sess.run(logits, {x: images()})
    path.write_bytes(frozen.SerializeToString())
    return out


def test_frozen_graph(tmp_path):
    logits = frozen_graph(tmp_path / "frozen.pb")
    assert frozen_graph_io(tmp_path / "frozen.pb") == (["input"], ["logits"])
    assert_same_logits(read_model_file(tmp_path / "frozen.pb", "frozen_graph"), logits)
    named = read_model_file(tmp_path / "frozen.pb", "frozen_graph", ["input"], ["logits"])
    assert_same_logits(named, logits)
    with pytest.raises(QuantflowError, match="not a frozen TensorFlow graph"):
        (tmp_path / "bad.pb").write_bytes(b"\x00not a graph")
        read_model_file(tmp_path / "bad.pb", "frozen_graph")


def test_config_entry_replaces_the_head_and_names_missing_files(source, tmp_path):
    from quantflow.deploy.convert import convert

    model, _ = source
    (tmp_path / "m.tflite").write_bytes(convert(model, "fp32"))
    spec = {"arch": "tflite_file", "path": str(tmp_path / "m.tflite")}
    rebuilt = model_from_spec(spec, SHAPE, 10)
    assert rebuilt.output_shape[-1] == 10 and rebuilt.layers[-1].name == "logits"
    with pytest.raises(QuantflowError, match="needs path"):
        model_from_spec({"arch": "h5_file"}, SHAPE, 10)
    with pytest.raises(QuantflowError, match="not found; give the path of a float .tflite"):
        model_from_spec({"arch": "tflite_file", "path": str(tmp_path / "no.tflite")}, SHAPE, 10)
