"""FAT threshold training (quantflow.quant.fat) on a tiny random model: the held-out RMSE to the
float logits drops from a too-wide max calibration, and the alphas stay in their bounds."""

import io
import pickle

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
from keras import layers  # noqa: E402

from quantflow.quant.calibrate import (
    alpha_bounds,
    alpha_variables,
    calibrate,
    thresholds,
    weight_quantizers,
)  # noqa: E402
from quantflow.quant.transform import fake_quant_model  # noqa: E402
from quantflow.errors import QuantflowError  # noqa: E402
from quantflow.quant.fat.thresholds import alpha_values, load_thresholds, save_thresholds
from quantflow.quant.schemes import parse_scheme, tflite_exportable
from quantflow.quant.fat.train import logits_rmse, train_thresholds
from quantflow.quant.packed import packed_size_bytes
from conftest import REPO

SIZE = 16


def small_model():
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU(6.0)(x)
    x = layers.Conv2D(16, 1, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(4, name="logits")(x))


def smooth_images(n: int, rng) -> np.ndarray:
    """Ordinary images: smooth random patterns in the middle of the pixel range."""
    coarse = rng.normal(128, 30, (n, 4, 4, 3))
    x = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2) + rng.normal(0, 8, (n, SIZE, SIZE, 3))
    return np.clip(np.round(x), 0, 255).astype(np.float32)


@pytest.fixture(scope="module")
def setup():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = small_model()
    train, val = smooth_images(256, rng), smooth_images(64, rng)
    # calibration with a few salt-and-pepper outliers: max ranges far too wide
    outliers = (rng.random((4, SIZE, SIZE, 3)) < 0.5).astype(np.float32) * 255.0
    calibration = np.concatenate([train[:60], outliers])
    return model, train, val, calibration


def _quantized(model, calibration, **options):
    qmodel = fake_quant_model(model, weight_bits=4, activation_bits=4, **options)
    calibrate(qmodel, calibration, method="max")
    return qmodel


def _in_bounds(qmodel) -> bool:
    return all(
        np.all((np.asarray(v) >= low) & (np.asarray(v) <= high))
        for v, low, high in alpha_bounds(qmodel)
    )


def test_training_lowers_held_out_rmse(setup):
    model, train, val, calibration = setup
    qmodel = _quantized(model, calibration)
    before = logits_rmse(model, qmodel, val)
    log = io.StringIO()
    dataset = tf.data.Dataset.from_tensor_slices(train).batch(16)
    result = train_thresholds(
        model,
        qmodel,
        dataset,
        epochs=3,
        learning_rate=0.02,
        reset_every=100,
        steps_per_epoch=12,
        val_ds=val,
        log_stream=log,
    )
    assert result["initial_val_rmse"] == pytest.approx(before, rel=1e-5)
    assert [row["epoch"] for row in result["history"]] == [1, 2, 3] and result["steps"] == 36
    assert result["final_val_rmse"] < 0.8 * result["initial_val_rmse"]
    assert logits_rmse(model, qmodel, val) == pytest.approx(result["final_val_rmse"], rel=1e-5)
    assert _in_bounds(qmodel)
    alphas = np.concatenate([np.ravel(v) for v in alpha_variables(qmodel)])
    assert alphas.min() < 0.95  # the too-wide ranges were narrowed
    assert "val RMSE" in log.getvalue()


def test_alphas_are_clipped_to_their_bounds(setup):
    """A huge learning rate pushes alphas past their bounds: after every step they are
    clipped back (checked on the alphas as trained, whichever epoch is kept at the end)."""
    model, train, val, calibration = setup
    qmodel = _quantized(model, calibration, symmetric=False)
    trained = []
    train_thresholds(
        model,
        qmodel,
        train,
        epochs=1,
        learning_rate=1.0,
        steps_per_epoch=5,
        val_ds=val[:16],
        on_epoch=lambda row, improved: trained.append(thresholds(qmodel)),
    )
    assert _in_bounds(qmodel)
    (info,) = trained
    shifts = [row["alpha_t"] for row in info.values() if "alpha_t" in row]
    assert shifts and all(-0.2 - 1e-6 <= a <= 0.4 + 1e-6 for a in shifts)
    assert min(shifts) < -0.19  # pushed to a bound and clipped there
    assert all(
        row["range"][0] <= 0.0 <= row["range"][1]
        for row in info.values()
        if row["kind"] == "activation"
    )


def test_model_without_thresholds_is_refused(setup):
    model, train, _, _ = setup
    with pytest.raises(QuantflowError, match="no threshold parameters"):
        train_thresholds(model, model, train, epochs=1)


def test_epoch_callback_batches_and_shuffling(setup):
    model, train, val, calibration = setup
    qmodel = _quantized(model, calibration)
    seen = []
    result = train_thresholds(
        model,
        qmodel,
        train[:100],
        epochs=2,
        learning_rate=0.01,
        val_ds=val[:32],
        batch_size=25,
        seed=0,
        on_epoch=lambda row, improved: seen.append((row["epoch"], improved)),
    )
    assert result["steps"] == 8  # 100 images in batches of 25, two passes
    assert [epoch for epoch, _ in seen] == [1, 2]
    improved = [epoch for epoch, better in seen if better]
    assert result["best_epoch"] == (improved[-1] if improved else 0)


def _captured_adam(monkeypatch) -> list:
    """Patch quantflow.quant.fat's optimizer factory to record the Adam it creates."""
    from quantflow.quant.fat import train as fat

    created = []

    def adam(learning_rate):
        created.append(keras.optimizers.Adam(learning_rate=learning_rate))
        return created[-1]

    monkeypatch.setattr(fat, "_adam", adam)
    return created


def _adam_snapshot(optimizer) -> dict:
    moments = [
        v
        for v in optimizer.variables
        if v is not optimizer.iterations and v is not optimizer.learning_rate
    ]
    return {
        "iterations": int(optimizer.iterations.numpy()),
        "moments": len(moments),
        "max_abs_moment": max(float(np.max(np.abs(v.numpy()))) for v in moments),
        "learning_rate": float(optimizer.learning_rate.numpy()),
    }


@pytest.mark.parametrize("reset", ["adam", "lr"])
def test_adam_moments_are_reinitialised_every_reset_every_batches(setup, monkeypatch, reset):
    """reset "adam" (the FAT reference): after every `reset_every` batches Adam's step
    count and moments are zero again, as in a new Adam; reset "lr" keeps them."""
    model, train, val, calibration = setup
    qmodel = _quantized(model, calibration)
    created = _captured_adam(monkeypatch)
    states = []
    result = train_thresholds(
        model,
        qmodel,
        train,
        epochs=3,
        learning_rate=0.01,
        reset_every=4,
        steps_per_epoch=2,
        val_ds=val[:16],
        batch_size=16,
        reset=reset,
        on_epoch=lambda row, improved: states.append(_adam_snapshot(created[0])),
    )
    assert len(created) == 1 and result["steps"] == 6
    alphas = len(alpha_variables(qmodel))
    assert all(s["moments"] == 2 * alphas for s in states)  # first and second moments
    after_2, after_4, after_6 = states
    assert after_2["iterations"] == 2 and after_2["max_abs_moment"] > 0
    if reset == "adam":
        assert after_4["iterations"] == 0 and after_4["max_abs_moment"] == 0.0
        assert after_4["learning_rate"] > 0  # only the state is reset, not the rate
        assert after_6["iterations"] == 2 and after_6["max_abs_moment"] > 0
    else:
        assert after_4["iterations"] == 4 and after_4["max_abs_moment"] > 0
        assert after_6["iterations"] == 6


def test_learning_rate_schedules():
    """reset "lr": Keras' cosine decay with restarts, as before; reset "adam": the
    reference's lr * exp(-1e-4 * step) * |cos(pi * k / (4 * reset_every))| + 1e-7."""
    from quantflow.quant.fat.train import _learning_rate_at

    cosine = keras.optimizers.schedules.CosineDecayRestarts(
        1e-3, first_decay_steps=400, t_mul=1.0, m_mul=1.0, alpha=0.0
    )
    for step in (0, 1, 250, 399, 400, 401, 1000):
        assert _learning_rate_at("lr", 1e-3, 400, step) == pytest.approx(
            float(cosine(step)), rel=1e-5, abs=1e-10
        )
    assert _learning_rate_at("adam", 1e-3, 400, 0) == pytest.approx(1e-3 + 1e-7)
    assert _learning_rate_at("adam", 1e-3, 400, 399) == pytest.approx(
        1e-3 * np.exp(-0.0399) * np.cos(np.pi * 399 / 1600) + 1e-7
    )
    assert _learning_rate_at("adam", 1e-3, 400, 400) == pytest.approx(1e-3 * np.exp(-0.04) + 1e-7)


def test_smooth_l1_matches_a_hand_computed_value():
    from quantflow.quant.fat.train import smooth_l1

    a = np.array([[1.0, 2.0, -1.0], [0.0, 0.0, 3.0]], dtype=np.float32)
    b = np.array([[1.0, 0.0, -1.5], [0.5, -1.0, 3.0]], dtype=np.float32)
    # differences [[0, 2, 0.5], [-0.5, 1, 0]]; per image the sum of sqrt(d^2 + 1e-5)
    first = np.sqrt(1e-5) + np.sqrt(4.00001) + np.sqrt(0.25001)
    second = np.sqrt(0.25001) + np.sqrt(1.00001) + np.sqrt(1e-5)
    assert float(smooth_l1(a, b)) == pytest.approx((first + second) / 2, rel=1e-6)
    assert float(smooth_l1(a, b)) == pytest.approx(2.0, abs=5e-3)  # ~ mean sum |d|
    assert float(smooth_l1(a, a)) == pytest.approx(3 * np.sqrt(1e-5), rel=1e-5)


def test_reference_optimizer_lowers_held_out_rmse(setup):
    model, train, val, calibration = setup
    qmodel = _quantized(model, calibration)
    log = io.StringIO()
    result = train_thresholds(
        model,
        qmodel,
        train,
        epochs=2,
        learning_rate=0.02,
        reset_every=5,
        steps_per_epoch=8,
        val_ds=val,
        batch_size=16,
        loss="smooth_l1",
        reset="adam",
        log_stream=log,
    )
    assert result["final_val_rmse"] < 0.8 * result["initial_val_rmse"]
    assert logits_rmse(model, qmodel, val) == pytest.approx(result["final_val_rmse"], rel=1e-5)
    assert _in_bounds(qmodel)
    assert "smooth_l1 loss, Adam with adam reset every 5 batches" in log.getvalue()


@pytest.mark.parametrize("options", [{"loss": "huber"}, {"reset": "moments"}])
def test_bad_optimizer_options_are_refused(setup, options):
    model, train, _, calibration = setup
    qmodel = _quantized(model, calibration)
    with pytest.raises(QuantflowError, match="loss must be one of rmse, smooth_l1"):
        train_thresholds(model, qmodel, train, epochs=1, **options)


def _validated(fat_section: dict) -> dict:

    from snakemake.utils import validate

    config = {
        "dataset": {"name": "fashion_mnist"},
        "models": {"m": {"arch": "tiny_mobilenet"}},
        "fat": fat_section,
    }
    validate(config, str(REPO / "rules/config.schema.yaml"))
    return config["fat"]


def test_optimizer_config_keys_validate():
    pytest.importorskip("snakemake")
    assert {k: _validated({})[k] for k in ("loss", "reset")} == {"loss": "rmse", "reset": "lr"}
    fat = _validated({"loss": "smooth_l1", "reset": "adam"})
    assert (fat["loss"], fat["reset"]) == ("smooth_l1", "adam")
    for bad, key in (
        ({"loss": "huber"}, "huber"),
        ({"reset": "moments"}, "moments"),
        ({"loss": 1}, "loss"),
    ):
        with pytest.raises(Exception, match=key):
            _validated(bad)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("w8a8-sym-pc", (8, 8, True, True)),
        ("w4a8-asym-pt", (4, 8, False, False)),
        ("w16a16-sym-pt", (16, 16, True, False)),
    ],
)
def test_scheme_names(name, expected):
    scheme = parse_scheme(name)
    keys = ("weight_bits", "activation_bits", "symmetric", "per_channel")
    assert tuple(scheme[k] for k in keys) == expected
    assert tflite_exportable(scheme) == (expected[0] <= 8 and expected[1] == 8)


@pytest.mark.parametrize("name", ["w8a8", "w8a8-sym", "w1a8-sym-pc", "w8a17-sym-pc", "W8A8-sym-pc"])
def test_bad_scheme_names_are_explained(name):
    with pytest.raises(QuantflowError, match="w8a8-sym-pc|from 2 to 16"):
        parse_scheme(name)


def test_thresholds_file_round_trip_and_refuses_code(setup, tmp_path):
    model, _, _, calibration = setup
    qmodel = _quantized(model, calibration)
    info = thresholds(qmodel)
    path = tmp_path / "thresholds.pickle"
    save_thresholds(path, {"scheme": "w4a4-sym-pc", "initial": info, "trained": info})
    loaded = load_thresholds(path)
    assert loaded["trained"] == info and loaded["scheme"] == "w4a4-sym-pc"
    alphas = alpha_values(loaded["trained"])
    weights = sum(len(np.ravel(v.numpy())) for v in alpha_variables(qmodel) if "kernel" in v.path)
    assert alphas["weight"].size == weights and np.all(alphas["activation"] == 1.0)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path.write_bytes(pickle.dumps({"format": 1, "x": Evil()}))
    with pytest.raises(QuantflowError, match="builtins.print"):
        load_thresholds(path)
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(QuantflowError, match="not a quantflow thresholds file"):
        load_thresholds(path)


def test_thresholds_pickle_holds_plain_values_and_old_numpy_files_ask_for_a_rerun(tmp_path):
    path = tmp_path / "thresholds.pickle"
    alphas = np.linspace(0.5, 1.0, 4, dtype=np.float32)
    save_thresholds(path, {"scheme": "w8a8-sym-pc", "alphas": alphas, "bits": np.int64(8)})
    assert b"numpy" not in path.read_bytes()  # arrays as plain records, no global
    loaded = load_thresholds(path)
    assert np.array_equal(loaded["alphas"], alphas) and loaded["bits"] == 8
    assert [p.name for p in tmp_path.iterdir()] == ["thresholds.pickle"]  # no temporary
    path.write_bytes(pickle.dumps({"format": 1, "alphas": alphas}, protocol=5))
    with pytest.raises(QuantflowError, match=r"old format.*--forcerun fat"):
        load_thresholds(path)
    path.write_bytes(pickle.dumps({"format": 1})[:-3])
    with pytest.raises(QuantflowError, match=r"truncated.*--forcerun fat "):
        load_thresholds(path)


def test_packed_size_counts_bits_per_weight(setup):
    model, _, _, calibration = setup
    sizes = {}
    for bits in (4, 8):
        qmodel = fake_quant_model(model, weight_bits=bits)
        layers_ = weight_quantizers(qmodel)
        kernels = sum(int(np.prod(layer.kernel.shape)) for layer in layers_)
        extras = sum(
            int(np.prod(layer.bias.shape)) + int(np.prod(layer.t_max.shape)) for layer in layers_
        )
        sizes[bits] = packed_size_bytes(qmodel)
        assert sizes[bits] == (kernels * bits + 32 * extras + 7) // 8
    assert sizes[4] < sizes[8]
