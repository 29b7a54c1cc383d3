"""Weights to a pickle and back: exact round trips, and a loader that refuses code."""

import os
import pickle
import re

import numpy as np
import pytest

from quantflow.errors import QuantflowError
from quantflow.formats.weights import (
    FORMAT,
    assign_weights,
    extract_weights,
    load_weights,
    rebuild_model,
    save_weights,
)
from conftest import REPO


@pytest.fixture(scope="module")
def model():
    """A small tiny_mobilenet with non-trivial BatchNorm: random gamma/beta, then moving
    statistics updated by a few training-mode passes."""
    import keras

    from quantflow.models.registry import build_model

    keras.utils.set_random_seed(0)
    m = build_model("tiny_mobilenet", (28, 28, 1), 10, width=0.25, head=64)
    rng = np.random.default_rng(0)
    for layer in m.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.2, layer.beta.shape).astype(np.float32))
    x = rng.random((16, 28, 28, 1), dtype=np.float32)
    for _ in range(3):
        m(x, training=True)
    return m


@pytest.fixture(scope="module")
def inputs():
    return np.random.default_rng(1).random((8, 28, 28, 1), dtype=np.float32)


def predict(model, x):
    return np.asarray(model(x, training=False))


def test_round_trip_gives_bit_identical_predictions(model, inputs, tmp_path):
    data = extract_weights(model)
    path = tmp_path / "weights.pkl"
    save_weights(data, path)
    rebuilt = rebuild_model(load_weights(path))
    assert np.array_equal(predict(rebuilt, inputs), predict(model, inputs))
    bn = rebuilt.get_layer("stem_bn")
    assert not np.allclose(np.asarray(bn.moving_mean), 0)  # BN really is non-trivial
    assert not np.allclose(np.asarray(bn.moving_variance), 1)
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pkl"]  # no temporary left


def test_extracted_layout(model):
    data = extract_weights(model)
    assert data["format"] == FORMAT
    layers, meta = data["layers"], data["metadata"]
    weighted = [layer.name for layer in model.layers if layer.weights]
    assert list(layers) == weighted  # model order, only layers with weights
    assert list(layers["block1_dw"]) == ["kernel"]
    assert list(layers["stem_bn"]) == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert list(layers["logits"]) == ["kernel", "bias"]
    assert all(
        isinstance(a, np.ndarray) and a.dtype == np.float32
        for roles in layers.values()
        for a in roles.values()
    )
    assert meta["trainable"]["stem_bn/gamma"] is True
    assert meta["trainable"]["stem_bn/moving_mean"] is False
    assert meta["trainable"]["block1_dw/kernel"] is True
    assert set(meta["trainable"]) == {f"{l}/{r}" for l, roles in layers.items() for r in roles}
    assert meta["layer_classes"]["block1_dw"] == "DepthwiseConv2D"
    assert meta["layer_classes"]["stem_bn"] == "BatchNormalization"
    assert meta["model_name"] == "tiny_mobilenet"
    assert meta["input_shape"] == [28, 28, 1] and meta["num_classes"] == 10
    assert set(meta["versions"]) == {"tensorflow", "keras", "numpy"}
    assert all(isinstance(v, str) for v in meta["versions"].values())
    assert isinstance(meta["architecture"], str) and "DepthwiseConv2D" in meta["architecture"]


def test_nested_models_are_flattened_and_rebuilt(inputs):
    import keras

    inner = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, name="d1"),
            keras.layers.BatchNormalization(name="bn"),
        ],
        name="inner",
    )
    x_in = keras.Input((4,))
    x = inner(keras.layers.Dense(6, name="d0")(x_in))
    seq = keras.layers.Reshape((1, 5))(x)
    seq = keras.layers.MultiHeadAttention(2, 3, name="mha")(seq, seq)
    out = keras.layers.Dense(3, name="out")(keras.layers.Flatten()(seq))
    outer = keras.Model(x_in, out, name="outer")
    inner.get_layer("bn").moving_mean.assign(np.linspace(-1, 1, 5).astype(np.float32))
    data = extract_weights(outer)
    assert list(data["layers"]) == ["d0", "inner/d1", "inner/bn", "mha", "out"]
    assert "query/kernel" in data["layers"]["mha"]
    assert data["metadata"]["trainable"]["inner/bn/moving_mean"] is False
    x = np.random.default_rng(2).random((5, 4), dtype=np.float32)
    assert np.array_equal(predict(rebuild_model(data), x), predict(outer, x))


def test_quantized_weights_rebuild_and_keep_moving_statistics(model, inputs):
    from quantflow.quant.weightonly.apply import quantize_weights

    data = extract_weights(model)
    quantized, errors = quantize_weights(data, "bin", 4)
    rebuilt = rebuild_model(quantized)
    bn, original = rebuilt.get_layer("stem_bn"), model.get_layer("stem_bn")
    assert np.array_equal(np.asarray(bn.moving_mean), np.asarray(original.moving_mean))
    assert not np.array_equal(np.asarray(bn.gamma), np.asarray(original.gamma))
    kernel = np.asarray(rebuilt.get_layer("stem_conv").kernel)
    assert len(np.unique(kernel)) <= 16
    assert predict(rebuilt, inputs).shape == (8, 10)
    low, mean, high = (errors[f"relative_error_pct_{k}"] for k in ("min", "mean", "max"))
    assert 0 <= low <= mean <= high < 100
    assert errors["relative_error_pct"]["stem_conv/kernel"] > 0


# ------------------------------------------------------------------ the safe loader


class Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class EvilEval:
    def __reduce__(self):
        return eval, ("__import__('os').getcwd()",)


def global_name(fn) -> str:
    return f"{fn.__module__}.{fn.__name__}"


@pytest.mark.parametrize(
    "wrap",
    [lambda e: e, lambda e: {"format": FORMAT, "metadata": {}, "layers": {"x": {"kernel": e}}}],
)
def test_pickle_running_a_command_is_refused_without_running_it(tmp_path, wrap):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(wrap(Evil(f"touch {marker}")), protocol=5))
    with pytest.raises(QuantflowError) as info:
        load_weights(path)
    message = str(info.value)
    assert global_name(os.system) in message  # 'posix.system' on Linux
    assert str(path) in message
    assert not marker.exists()


def test_pickle_calling_eval_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"format": FORMAT, "x": EvilEval()}, protocol=4))
    with pytest.raises(QuantflowError, match=re.escape("'builtins.eval'")):
        load_weights(path)


@pytest.mark.parametrize(
    "payload, found",
    [
        ([1, 2, 3], "a list"),
        ("quantflow-weights/1", "a str"),
        ({"format": "keras-weights/9", "layers": {}}, "format 'keras-weights/9'"),
        ({"metadata": {}, "layers": {}}, "format None"),
    ],
)
def test_pickle_that_is_not_a_weights_dict_is_refused(tmp_path, payload, found):
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=5))
    with pytest.raises(QuantflowError, match="not a quantflow weights file") as info:
        load_weights(path)
    assert found in str(info.value)


def test_weights_dict_with_a_non_array_is_refused(tmp_path):
    path = tmp_path / "w.pkl"
    path.write_bytes(
        pickle.dumps(
            {"format": FORMAT, "metadata": {}, "layers": {"d": {"kernel": [1.0, 2.0]}}}, protocol=5
        )
    )
    with pytest.raises(QuantflowError, match="d/kernel is not a numeric numpy array"):
        load_weights(path)


@pytest.mark.parametrize("cut", [0, 1, 10, 0.5, -1])
def test_truncated_file_is_refused(model, tmp_path, cut):
    path = tmp_path / "w.pkl"
    save_weights(extract_weights(model), path)
    blob = path.read_bytes()
    keep = int(len(blob) * cut) if isinstance(cut, float) else (cut if cut >= 0 else len(blob) - 1)
    path.write_bytes(blob[:keep])
    with pytest.raises(QuantflowError, match="corrupt or truncated"):
        load_weights(path)


def test_garbage_and_missing_files_are_refused(tmp_path):
    path = tmp_path / "w.pkl"
    path.write_bytes(b"\x80\x05\x95this is not a pickle at all")
    with pytest.raises(QuantflowError, match="corrupt or truncated"):
        load_weights(path)
    with pytest.raises(QuantflowError, match="cannot read"):
        load_weights(tmp_path / "missing.pkl")


def test_arrays_of_every_plain_dtype_round_trip(tmp_path):
    from quantflow.formats.safepickle import PLAIN_DTYPES

    rng = np.random.default_rng(3)
    layers = {"l": {name: (rng.random((2, 3)) * 50).astype(name) for name in PLAIN_DTYPES}}
    layers["l"].update(
        strided=np.arange(6, dtype=np.float16).reshape(2, 3)[:, ::2],
        fortran=np.asfortranarray(np.ones((2, 3))),
        scalar=np.array(1.5, np.float32),
        big_endian=np.arange(3, dtype=">f4"),
    )
    data = {
        "format": FORMAT,
        "metadata": {"scalar": np.float32(2.5), "n": np.int64(3), "shape": (28, 28, 1)},
        "layers": layers,
    }
    path = tmp_path / "w.pickle"
    save_weights(data, path)
    assert b"numpy" not in path.read_bytes()  # plain values only: no global in the file
    loaded = load_weights(path)
    for role, a in layers["l"].items():
        assert loaded["layers"]["l"][role].dtype == a.dtype.newbyteorder("=")
        assert np.array_equal(loaded["layers"]["l"][role], a)
    assert loaded["metadata"] == {"scalar": 2.5, "n": 3, "shape": (28, 28, 1)}
    with pytest.raises(QuantflowError, match="complex64"):
        save_weights({**data, "layers": {"l": {"c": np.zeros(2, np.complex64)}}}, path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_old_format_file_asks_to_rerun_the_rule(model, tmp_path, protocol):
    """Weights files of earlier runs pickled numpy arrays as such: refused, clearly."""
    path = tmp_path / "weights.pickle"
    path.write_bytes(pickle.dumps(extract_weights(model), protocol=protocol))
    with pytest.raises(QuantflowError) as info:
        load_weights(path)
    message = str(info.value)
    assert "old format" in message and str(path) in message
    # tmp_path is not a run's float/ folder: a weight-quantized checkpoint's rule
    assert "snakemake --cores all --forcerun weightquant" in message


def test_forged_numpy_dtype_file_is_refused(tmp_path):
    """The 444-byte kind of attack (a numpy dtype forged by BUILD to hide an object field;
    array.copy() then dereferences a chosen pointer) names globals: refused unread."""
    from test_safepickle import forged_dtype_pickle

    path = tmp_path / "weights.pickle"
    path.write_bytes(forged_dtype_pickle())
    with pytest.raises(QuantflowError, match="numpy.dtype.*nothing in it was executed"):
        load_weights(path)


def test_save_replaces_atomically(model, tmp_path):
    path = tmp_path / "w.pkl"
    path.write_bytes(b"old")
    data = extract_weights(model)
    save_weights(data, path)
    assert load_weights(path)["metadata"]["model_name"] == "tiny_mobilenet"
    assert [p.name for p in tmp_path.iterdir()] == ["w.pkl"]
    with pytest.raises(QuantflowError, match="not a quantflow weights file"):
        save_weights({"layers": {}}, path)
    assert load_weights(path)["format"] == FORMAT  # the old file is intact


def test_the_project_never_unpickles_with_plain_pickle():
    """Weights files are read with load_weights only: plain pickle.load would run code."""
    for source in [*(REPO / "quantflow").glob("*.py"), *(REPO / "scripts").glob("*.py")]:
        text = source.read_text()
        assert not re.search(r"pickle\.(load|loads)\(", text), f"{source} calls pickle.load"


# ------------------------------------------------------------------ rebuilding


def test_shape_mismatch_is_refused(model):
    data = extract_weights(model)
    data["layers"]["stem_conv"]["kernel"] = np.zeros((3, 3, 1, 9), np.float32)
    with pytest.raises(QuantflowError, match=re.escape("stem_conv/kernel: shape (3, 3, 1, 9)")):
        rebuild_model(data)


def test_missing_and_extra_layers_and_roles_are_refused(model):
    data = extract_weights(model)
    missing_layer = {**data, "layers": {k: v for k, v in data["layers"].items() if k != "head"}}
    with pytest.raises(QuantflowError, match="no weights for layer 'head'"):
        rebuild_model(missing_layer)
    extra_layer = {**data, "layers": {**data["layers"], "ghost": {"kernel": np.zeros(1)}}}
    with pytest.raises(QuantflowError, match="layer 'ghost'"):
        rebuild_model(extra_layer)
    layers = {k: dict(v) for k, v in data["layers"].items()}
    del layers["logits"]["bias"]
    with pytest.raises(QuantflowError, match="no weights for logits/bias"):
        rebuild_model({**data, "layers": layers})
    layers = {k: dict(v) for k, v in data["layers"].items()}
    layers["stem_conv"]["bias"] = np.zeros(8, np.float32)
    with pytest.raises(QuantflowError, match="stem_conv/bias, which the model does not have"):
        rebuild_model({**data, "layers": layers})


def test_failed_assignment_changes_nothing(model, inputs):
    data = extract_weights(model)
    before = predict(model, inputs)
    layers = {k: {r: a * 0 for r, a in v.items()} for k, v in data["layers"].items()}
    layers["logits"]["bias"] = np.zeros(11, np.float32)
    with pytest.raises(QuantflowError, match="logits/bias"):
        assign_weights(model, layers)
    assert np.array_equal(predict(model, inputs), before)


def test_broken_architecture_is_refused(model):
    data = extract_weights(model)
    data["metadata"] = {**data["metadata"], "architecture": '{"class_name": "Nope"}'}
    with pytest.raises(QuantflowError, match="cannot rebuild model 'tiny_mobilenet'"):
        rebuild_model(data)


def test_huge_layer_in_the_architecture_is_refused_before_allocation(tmp_path):
    """An architecture that declares a Dense of 10^9 units next to small stored arrays
    is refused when its variables have shapes but no memory (4 TB would not fit), and
    nothing is left for Keras to allocate later."""
    import time

    import keras

    x = keras.Input((1000,))
    small = keras.Model(x, keras.layers.Dense(10, name="head")(x), name="small")
    data = extract_weights(small)
    data["metadata"] = {
        **data["metadata"],
        "architecture": data["metadata"]["architecture"].replace(
            '"units": 10,', '"units": 1000000000,'
        ),
    }
    assert "1000000000" in data["metadata"]["architecture"]
    path = tmp_path / "weights.pickle"
    save_weights(data, path)
    start = time.perf_counter()
    with pytest.raises(QuantflowError, match=re.escape("(1000, 1000000000) in the model")):
        rebuild_model(load_weights(path))
    assert time.perf_counter() - start < 30
    with keras.StatelessScope():  # would allocate any variable left uninitialized
        pass
    assert np.array_equal(  # the honest file still rebuilds
        predict(rebuild_model(extract_weights(small)), np.ones((1, 1000), np.float32)),
        predict(small, np.ones((1, 1000), np.float32)),
    )


def test_architecture_that_is_not_text_is_refused(model):
    data = extract_weights(model)
    data["metadata"] = {**data["metadata"], "architecture": {"class_name": "Functional"}}
    with pytest.raises(QuantflowError, match="not JSON text"):
        rebuild_model(data)


def test_compiled_model_rebuilds_without_its_optimizer():
    """A compiled model's architecture carries its compile config; the rebuild ignores it
    (an optimizer's variables cannot be created unallocated) and predicts the same."""
    import keras

    x = keras.Input((4,))
    model = keras.Model(x, keras.layers.Dense(3, name="d")(x))
    model.compile(optimizer="adam", loss="mse")
    data = extract_weights(model)
    assert "compile_config" in data["metadata"]["architecture"]
    rebuilt = rebuild_model(data)
    assert not rebuilt.compiled
    x = np.random.default_rng(4).random((2, 4), dtype=np.float32)
    assert np.array_equal(predict(rebuilt, x), predict(model, x))
