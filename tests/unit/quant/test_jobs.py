"""The FAT and adjustable jobs as library functions (quantflow.quant.fat.job,
quantflow.quant.adjustable.job), from files to files as the workflow runs them, without
Snakemake: a small model and small splits on disk, FAT on them, then an adjustable target
started from FAT's thresholds. Their outputs are checked against recomputations."""

import csv
import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

from quantflow.data.prepare import save_split, write_info  # noqa: E402
from quantflow.data.splits import Split  # noqa: E402
from quantflow.formats import bitpack  # noqa: E402
from quantflow.quant.adjustable.job import AdjustableFiles, AdjustableOutputs  # noqa: E402
from quantflow.quant.adjustable.job import run as run_adjustable  # noqa: E402
from quantflow.quant.fat.job import FatFiles, FatOutputs, run as run_fat  # noqa: E402
from quantflow.quant.fat.thresholds import load_thresholds  # noqa: E402
from quantflow.quant.fat.train import logits_rmse  # noqa: E402

FAT_CFG = {
    "images": 64,
    "validation_images": 32,
    "batch_size": 16,
    "epochs": 2,
    "learning_rate": 1e-3,
    "reset_every": 400,
    "loss": "rmse",
    "reset": "lr",
    "calibration": {"batches": 2, "method": "max", "percentile": 99.99},
}
TARGET = {
    "target_score": 0.3,
    "images": 64,
    "validation_images": 32,
    "batch_size": 16,
    "epochs": 1,
    "mini_epochs": 2,
    "swa_epochs": 0,
    "calibration_batches": 2,
}


def small_model():
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 1), name="image")
    y = layers.Rescaling(1 / 255.0)(x)
    y = layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv")(y)
    y = layers.BatchNormalization(name="bn")(y)
    y = layers.ReLU(6.0, name="relu")(y)
    y = layers.DepthwiseConv2D(3, padding="same", name="dw", activation="relu")(y)
    y = layers.GlobalAveragePooling2D()(y)
    return keras.Model(x, layers.Dense(4, name="logits")(y), name="small")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("jobs")
    rng = np.random.default_rng(0)
    splits = {
        name: (
            rng.integers(0, 256, (n, 8, 8, 1)).astype(np.uint8),
            rng.integers(0, 4, n).astype(np.int32),
        )
        for name, n in (("train", 96), ("val", 48))
    }
    for name, (x, y) in splits.items():
        save_split(d / f"{name}.npz", x, y)
    write_info(d / "info.json", "random", ["a", "b", "c", "d"], splits)
    small_model().save(d / "model.keras")
    return d, FatFiles(
        str(d / "model.keras"), str(d / "train.npz"), str(d / "val.npz"), str(d / "info.json")
    )


@pytest.fixture(scope="module")
def fat(files):
    d, inp = files
    out = FatOutputs.under(d / "fat")
    (d / "fat").mkdir()
    return out, run_fat(inp, out, "w8a8-sym-pc", FAT_CFG, seed=1)


def test_the_fat_job_writes_what_it_trained(files, fat):
    d, inp = files
    out, summary = fat
    assert json.loads(open(out.summary).read()) == json.loads(json.dumps(summary))
    assert summary["final_val_rmse"] <= summary["initial_val_rmse"]
    # the saved model gives the held-out RMSE the summary reports (recomputed here on the
    # same seeded held-out images)
    val = Split(inp.val, (8, 8))
    rng = np.random.default_rng(1)
    rng.permutation(96)  # the training sample's draw comes first
    held_out = val.take(np.sort(rng.permutation(48)[:32]))
    float_model = keras.saving.load_model(inp.model, compile=False)
    qmodel = keras.saving.load_model(out.model, compile=False)
    rmse = logits_rmse(float_model, qmodel, held_out, batch_size=16)
    assert rmse == pytest.approx(summary["final_val_rmse"], rel=1e-5)
    saved = load_thresholds(out.thresholds)
    assert saved["scheme"] == "w8a8-sym-pc" and set(saved["trained"]) == set(saved["initial"])
    with open(out.history) as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2]


def test_the_adjustable_job_starts_from_fat_and_packs_its_bits(files, fat):
    d, inp = files
    fat_out, _ = fat
    (d / "adjq").mkdir()
    out = AdjustableOutputs.under(d / "adjq")
    summary = run_adjustable(
        AdjustableFiles(inp.model, inp.train, inp.val, inp.info, fat_out.thresholds),
        out,
        "t",
        TARGET,
        seed=1,
    )
    assert summary["init"]["from"] == "fat w8a8-sym-pc"
    info = json.loads(open(out.quant_info).read())
    layers_ = {c["name"]: c for c in json.loads(open(out.model_info).read())["layers"]}
    # the packed file holds every kernel channel at the bits the search chose: its payload
    # is sum(bits x weights per channel), counted here from quant_info and the counts
    bits = sum(
        sum(row["bits"]) * layers_[name]["weights_per_channel"]
        for name, row in info["weights"].items()
        if row["layer"] is not None
    )
    assert summary["packed"]["payload_bits"] == bits  # read back from the file
    assert bitpack.load_packed(out.packed)  # a packed-weights file the library reads
    assert json.loads(open(out.score).read()) == info["score"] == summary["score"]
    assert 0 < summary["score"]["score"] < 2
