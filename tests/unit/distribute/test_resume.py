"""Resume state (quantflow.distribute.resume) and FAT's threshold training resumed on one
device: a run stopped after an epoch and started again ends exactly where an
uninterrupted run ends; a state from other settings is not used."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

from quantflow.distribute.resume import ResumeState, fingerprint_files  # noqa: E402
from quantflow.errors import QuantflowError  # noqa: E402
from quantflow.quant.calibrate import alpha_bounds, calibrate  # noqa: E402
from quantflow.quant.fat.train import train_thresholds  # noqa: E402
from quantflow.quant.transform import fake_quant_model  # noqa: E402


def test_state_round_trip_and_fingerprints(tmp_path):
    state = ResumeState(tmp_path / "r", {"seed": 1})
    assert state.load() is None
    state.save({"epoch": 2, "history": [{"a": 1.5}]}, {"x/0": np.arange(3.0)})
    meta, arrays = state.load()
    assert meta == {"epoch": 2, "history": [{"a": 1.5}]}
    np.testing.assert_array_equal(arrays["x/0"], np.arange(3.0))
    assert ResumeState(tmp_path / "r", {"seed": 2}).load() is None  # other settings
    reader = ResumeState(tmp_path / "r", {"seed": 1}, write=False)  # a non-chief worker
    reader.save({"epoch": 3}, {})
    reader.clear()
    assert reader.load()[0]["epoch"] == 2
    state.path.write_bytes(b"not an npz")
    assert state.load() is None
    state.clear()
    assert not (tmp_path / "r").exists()
    (tmp_path / "f").write_bytes(b"abc")
    digest = fingerprint_files(tmp_path / "f")[str(tmp_path / "f")]
    assert digest == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


class Stop(Exception):
    pass


def _model():
    keras.utils.set_random_seed(0)
    x = keras.Input((12, 12, 1))
    y = layers.Rescaling(1 / 16.0)(x)
    y = layers.Conv2D(8, 3, padding="same", name="conv")(y)
    y = layers.ReLU(6.0)(y)
    y = layers.GlobalAveragePooling2D()(y)
    return keras.Model(x, layers.Dense(4, name="logits")(y))


def _train(state, stop_after=None):
    model = _model()
    qmodel = fake_quant_model(model, weight_bits=4, activation_bits=4, per_channel=False)
    images = np.random.default_rng(1).integers(0, 256, (80, 12, 12, 1)).astype(np.float32)
    calibrate(qmodel, images, 2, batch_size=16)

    def on_epoch(row, improved):
        if row["epoch"] == stop_after:
            raise Stop()

    result = train_thresholds(
        model,
        qmodel,
        images[:64],
        epochs=3,
        learning_rate=1e-3,
        reset_every=3,
        val_ds=images[64:],
        batch_size=16,
        seed=2,
        reset="adam",
        on_epoch=on_epoch,
        resume=state,
    )
    return result, [np.asarray(v) for v, _, _ in alpha_bounds(qmodel)]


def test_fat_training_resumes_where_it_stopped(tmp_path):
    whole, whole_alphas = _train(None)
    state = ResumeState(tmp_path, {"job": "test"})
    with pytest.raises(Stop):
        _train(state, stop_after=2)
    # the state is saved after the epoch's callback: epoch 1's is there
    assert state.load()[0]["epoch"] == 1
    resumed, alphas = _train(state, stop_after=1)  # resumed: epoch 1 is not run again
    assert resumed == whole
    for a, b in zip(alphas, whole_alphas):
        np.testing.assert_array_equal(a, b)
    assert state.load()[0]["epoch"] == 3  # the job clears it once its outputs are written


def test_a_state_of_another_model_is_refused(tmp_path):
    state = ResumeState(tmp_path, {"job": "test"})
    state.save(
        {"epoch": 1, "steps": 4, "history": [], "initial": 1.0, "best": 1.0, "best_epoch": 0},
        {"alpha/0": np.zeros(7)},
    )
    with pytest.raises(QuantflowError, match="resume state does not fit this model"):
        _train(state)


def _search(state, stop_after=None):
    from quantflow.quant.adjustable.score import ScoreGraph
    from quantflow.quant.adjustable.settings import Settings, build_model
    from quantflow.quant.adjustable.settings import calibrate as calibrate_adjustable
    from quantflow.quant.adjustable.train import _variables
    from quantflow.quant.adjustable.train import train as search
    from quantflow.quant.micronet.count import count_model

    model = _model()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (96, 12, 12, 1)).astype(np.float32)
    labels = rng.integers(0, 4, 96).astype(np.int32)
    settings = Settings(
        images=64,
        batch_size=16,
        calibration_batches=2,
        epochs=2,
        mini_epochs=3,  # the stop falls inside the first epoch
        swa_epochs=1,
        bits_learning_rate=0.5,  # bits fall fast: layers join the int4 class
        learning_rate=1e-3,
    )
    qmodel = build_model(model, settings)
    calibrate_adjustable(qmodel, images[:64], settings)
    graph = ScoreGraph(qmodel, count_model(model), reference=settings.reference)
    split = {"images": images[:64], "labels": labels[:64]}
    split.update(val_images=images[64:], val_labels=labels[64:])
    checkpoints = []

    def on_checkpoint(row, best):
        if row["mini_epoch"] == stop_after:
            raise Stop()
        checkpoints.append((row["mini_epoch"], best))

    result = search(
        model,
        qmodel,
        graph,
        split,
        settings,
        seed=3,
        log=lambda *_: None,
        on_checkpoint=on_checkpoint,
        resume=state,
    )
    weights, betas = _variables(qmodel)
    return result, [np.asarray(v) for v in weights + betas], checkpoints


def test_the_adjustable_search_resumes_where_it_stopped(tmp_path):
    whole, whole_values, _ = _search(None)
    assert any(r["moved_to_int4"] for r in whole["history"][1:])  # the int4 class is restored
    state = ResumeState(tmp_path, {"job": "test"})
    with pytest.raises(Stop):
        _search(state, stop_after=2)
    saved = state.load()[0]
    assert saved["mini_epoch"] == 1
    resumed, values, checkpoints = _search(state)
    # the kept state's checkpoint is written again first (the rerun's outputs start empty),
    # then mini-epochs 2 to 6: nothing before the stop is trained again
    assert checkpoints[0] == (saved["best"]["mini_epoch"], True)
    assert [m for m, _ in checkpoints[1:]] == [2, 3, 4, 5, 6]
    for key in ("history", "best", "final_score", "final_accuracy", "steps"):
        assert resumed[key] == whole[key], key
    assert resumed["swa"]["after"] == whole["swa"]["after"]
    for a, b in zip(values, whole_values):
        np.testing.assert_array_equal(a, b)
