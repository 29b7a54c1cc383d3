"""Two worker processes on 127.0.0.1 (TF_CONFIG, MultiWorkerMirroredStrategy) train one
FAT job together and write one set of outputs; a worker killed mid-epoch takes the job
down (its peer's collectives are aborted, and the job says to rerun it), and the rerun
resumes after the last finished epoch, ending exactly where the uninterrupted job ended."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import free_ports

keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

from quantflow.data.prepare import save_split, write_info  # noqa: E402
from quantflow.quant.fat.job import FatOutputs, resume_dir  # noqa: E402
from quantflow.quant.fat.thresholds import load_thresholds  # noqa: E402

JOB = Path(__file__).with_name("workers_job.py")
CFG = {
    "images": 96,
    "validation_images": 32,
    "batch_size": 16,  # 6 steps an epoch
    "epochs": 3,
    "learning_rate": 1e-3,
    "reset_every": 4,
    "loss": "rmse",
    "reset": "adam",  # Adam's state is reset within an epoch: the resume must restore it
    "calibration": {"batches": 2, "method": "max", "percentile": 99.99},
}
STEPS_PER_EPOCH = 6


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("workers")
    rng = np.random.default_rng(0)
    splits = {
        name: (
            rng.integers(0, 256, (n, 12, 12, 1)).astype(np.uint8),
            rng.integers(0, 4, n).astype(np.int32),
        )
        for name, n in (("train", 96), ("val", 48))
    }
    for name, (x, y) in splits.items():
        save_split(d / f"{name}.npz", x, y)
    write_info(d / "info.json", "random", ["a", "b", "c", "d"], splits)
    keras.utils.set_random_seed(0)
    x = keras.Input((12, 12, 1), name="image")
    y = layers.Rescaling(1 / 16.0)(x)  # logits of a few units: visible quantization error
    y = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(y)
    y = layers.BatchNormalization(name="bn")(y)
    y = layers.ReLU(6.0, name="relu")(y)
    y = layers.DepthwiseConv2D(3, padding="same", name="dw", activation="relu")(y)
    y = layers.GlobalAveragePooling2D()(y)
    keras.Model(x, layers.Dense(4, name="logits")(y)).save(d / "model.keras")
    return d


def start_cluster(files, out, die_at=None):
    """Two workers (TF_CONFIG) of one FAT job writing to `out`; worker 1 kills itself
    before global step `die_at` when given."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    procs = []
    for index in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        )
        if die_at is not None and index == 1:
            env["DIE_AT_STEP"] = str(die_at)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(JOB), str(files), str(out), json.dumps(CFG)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def finish(procs, timeout=600):
    return [(p.wait(timeout), p.communicate()[0]) for p in procs]


@pytest.fixture(scope="module")
def runs(files, tmp_path_factory):
    """The uninterrupted job and the one whose worker 1 dies in epoch 2 side by side, then
    the rerun of the latter."""
    whole, broken = tmp_path_factory.mktemp("whole"), tmp_path_factory.mktemp("broken")
    jobs = start_cluster(files, whole), start_cluster(files, broken, STEPS_PER_EPOCH + 3)
    whole_logs, broken_logs = (finish(procs) for procs in jobs)
    for code, log in whole_logs:
        assert code == 0, log[-4000:]
    state = resume_dir(FatOutputs.under(broken)) / "state.npz"
    assert state.exists(), broken_logs[0][1][-4000:]
    outputs_after_crash = sorted(p.name for p in broken.iterdir())
    rerun_logs = finish(start_cluster(files, broken))
    for code, log in rerun_logs:
        assert code == 0, log[-4000:]
    return whole, whole_logs, broken, broken_logs, outputs_after_crash, rerun_logs


def test_two_workers_train_fat_and_write_one_set_of_outputs(runs):
    whole, logs, *_ = runs
    results = [json.loads(log.strip().splitlines()[-1]) for _, log in logs]
    assert [r["chief"] for r in results] == [True, False]
    assert all(r["replicas"] == 2 for r in results)
    for task, (_, log) in enumerate(logs):
        assert f"2 replicas (/job:worker/replica:0/task:{task}/device:CPU:0)" in log
    summary = json.loads((whole / "fat.json").read_text())
    assert summary["replicas"] == 2 and summary["steps"] == 3 * STEPS_PER_EPOCH
    assert summary["final_val_rmse"] < summary["initial_val_rmse"]
    # one set of files, the chief's; no resume state left behind, no stray temporaries
    names = sorted(p.name for p in whole.iterdir())
    assert names == sorted(
        ["ckpt", "best_ckpt", "thresholds.pickle", "model.keras", "history.csv", "fat.json"]
    )


def test_a_killed_worker_takes_the_job_down_and_the_rerun_resumes(runs):
    whole, _, broken, crash, outputs_after_crash, rerun = runs
    (chief_code, chief_log), (worker_code, worker_log) = crash
    assert worker_code == -9 and f"killing myself at step {STEPS_PER_EPOCH + 3}" in worker_log
    # the surviving worker stops (it does not hang) with the one line that says what to do
    assert chief_code != 0
    assert "a worker of this job's cluster failed or left" in chief_log, chief_log[-3000:]
    assert "rerun the job on all its workers" in chief_log
    assert "fat.json" not in outputs_after_crash and "thresholds.pickle" not in outputs_after_crash
    for _, log in rerun:
        assert "resumed after epoch 1 (step 6)" in log, log[-3000:]
    # resumed, it ends where the uninterrupted job ended, bit for bit
    done, expected = (json.loads((d / "fat.json").read_text()) for d in (broken, whole))
    for key in ("initial_val_rmse", "final_val_rmse", "best_epoch", "steps", "alphas"):
        assert done[key] == expected[key], key
    assert (broken / "history.csv").read_text() == (whole / "history.csv").read_text()
    trained, reference = (
        load_thresholds(d / "thresholds.pickle")["trained"] for d in (broken, whole)
    )
    np.testing.assert_equal(trained, reference)
    assert not resume_dir(FatOutputs.under(broken)).exists()
