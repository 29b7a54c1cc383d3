"""Which tf.distribute strategy a training job gets (quantflow.distribute.strategy), and
one device against two replicas (MirroredStrategy over two logical CPUs, and fine-tuning
also on two workers on 127.0.0.1, MultiWorkerMirroredStrategy: FAT's workers in
test_workers.py), in fresh processes: logical devices exist only if made before
TensorFlow starts.

Stated tolerances: the FAT gradient summed over two replicas equals one device's within
0.5% of its largest entry (float32 sums in another order, with cancellation); fine-tuning
losses within 1e-3 relative and weights within 1e-3 of their scale or 1e-4 (a fortieth of
a learning-rate step, for small ones such as BatchNorm offsets); FAT's held-out RMSE
within 2% after its first epoch and its alphas within one Adam step (the learning rate):
FAT's gradients are below Adam's epsilon, so Adam moves each alpha by up to a whole step
in the direction of a gradient whose sign float rounding may flip; the adjustable search's
losses within 1e-4 relative, its bit-width parameters (betas, which move by 0.04 in two
mini-epochs) within 1e-3 and its weights within 1e-5 after every mini-epoch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import free_ports

from quantflow.distribute.strategy import (
    choose,
    is_chief,
    settings,
    slurm_tasks,
    worker_port,
)
from quantflow.errors import QuantflowError
from quantflow.workflow.workers import tasks_to_start

JOB = Path(__file__).with_name("replicas_job.py")


def test_auto_picks_by_devices_and_cluster():
    assert choose(None, gpus=0, cpus=1, environ={}) == "default"
    assert choose(None, gpus=1, cpus=1, environ={}) == "default"
    assert choose(None, gpus=2, cpus=1, environ={}) == "mirrored"
    assert choose({"logical_cpus": 2}, gpus=0, cpus=2, environ={}) == "mirrored"
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2"}
    assert slurm_tasks(slurm) == 2 and choose(None, 0, 1, slurm) == "multi_worker"
    # the batch process of a two-task SLURM job (the SLURM executor leaves it only the
    # job id) starts the two workers when the job's resources ask for them
    batch, two = {"SLURM_JOB_ID": "7"}, {"mpi": "srun", "tasks": 2}
    assert slurm_tasks(batch) == 1 and choose(None, 0, 1, batch) == "default"
    assert tasks_to_start(two, batch) == 2 and tasks_to_start(two, slurm) == 0
    assert tasks_to_start({"mpi": "srun", "nodes": 2, "tasks_per_node": 2}, batch) == 4
    assert tasks_to_start({"tasks": 2}, batch) == 0  # no launcher: one process
    assert tasks_to_start(two, {}) == 0  # not a SLURM job
    assert worker_port(batch) == 20000 + 7 * 32
    assert worker_port({**batch, "QUANTFLOW_WORKER_PORT": "9000"}) == 9000
    # a one-task SLURM job (what the SLURM executor gives by default) stays on one device
    assert choose(None, 0, 1, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) == "default"
    tf_config = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:2"]}})}
    assert choose(None, 0, 1, tf_config) == "multi_worker"
    assert choose({"strategy": "default"}, gpus=4, cpus=1, environ=slurm) == "default"


def test_bad_settings_are_named():
    with pytest.raises(QuantflowError, match="distribute.strategy must be one of"):
        settings({"strategy": "horovod"})
    with pytest.raises(QuantflowError, match="logical_cpus"):
        settings({"logical_cpus": 0})
    with pytest.raises(QuantflowError, match="unknown keys"):
        settings({"gpus": 2})
    assert is_chief(None)


def start_job(distribute: dict, parts: str, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(JOB), json.dumps(distribute), parts],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def start_workers(parts: str) -> list[subprocess.Popen]:
    """Two workers on 127.0.0.1 (TF_CONFIG): MultiWorkerMirroredStrategy."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return [
        start_job(
            {"strategy": "auto"},
            parts,
            {
                **env,
                "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
                ),
            },
        )
        for i in range(2)
    ]


def result(job: subprocess.Popen) -> dict:
    out, err = job.communicate(timeout=900)
    assert job.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs():
    """One device, two logical CPUs (MirroredStrategy) and two workers on 127.0.0.1
    (MultiWorkerMirroredStrategy), side by side (each is mostly single-threaded start-up
    and small steps)."""
    jobs = (
        start_job({"strategy": "auto"}, "train,fat,adjustable"),
        start_job({"strategy": "auto", "logical_cpus": 2}, "train,fat,adjustable,gradient"),
        *start_workers("train"),
    )
    one, two, chief, _ = (result(job) for job in jobs)
    assert one["replicas"] == 1 and "default strategy" in one["strategy"]
    assert two["replicas"] == 2 and "MirroredStrategy" in two["strategy"]
    assert chief["replicas"] == 2 and "/job:worker/replica:0/task:0" in chief["strategy"]
    return one, two, chief


@pytest.fixture(scope="module")
def one_and_two(runs):
    return runs[:2]


@pytest.fixture(scope="module")
def one_and_workers(runs):
    return runs[0], runs[2]


def test_the_fat_gradient_of_two_replicas_is_the_global_batchs(one_and_two):
    _, two = one_and_two
    assert two["gradient"]["rmse"] < 5e-3 and two["gradient"]["smooth_l1"] < 5e-3


@pytest.mark.parametrize("pair", ["one_and_two", "one_and_workers"])
def test_fine_tuning_agrees_across_replica_counts(pair, request):
    one, two = request.getfixturevalue(pair)
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-3)
    np.testing.assert_allclose(two["val_loss"], one["val_loss"], rtol=1e-3)
    for a, b in zip(one["weights"], two["weights"]):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= max(1e-3 * np.abs(a).max(), 1e-4)


def test_fat_agrees_across_replica_counts(one_and_two):
    one, two = one_and_two
    assert one["fat"][0] == two["fat"][0]  # the same float model and calibration
    assert abs(two["fat"][1] - one["fat"][1]) <= 0.02 * one["fat"][1]
    first = [np.asarray(v) for v in one["alpha_epochs"][0]]
    second = [np.asarray(v) for v in two["alpha_epochs"][0]]
    moved = max(np.abs(a - 1).max() for a in first)
    assert moved > 0.005  # the alphas did train
    assert max(np.abs(a - b).max() for a, b in zip(first, second)) <= 1e-2  # the lr
    assert np.mean(np.concatenate([np.abs(a - b) for a, b in zip(first, second)])) < 1e-3


def test_adjustable_agrees_across_replica_counts(one_and_two):
    one, two = (run["adjustable"] for run in one_and_two)
    losses = [r["loss"] for r in one["history"][1:]]
    np.testing.assert_allclose([r["loss"] for r in two["history"][1:]], losses, rtol=1e-4)
    first = np.asarray(one["states"][0]["betas"])
    assert np.abs(np.asarray(one["states"][-1]["betas"]) - first).max() > 0.01  # trained
    for a, b in zip(one["states"], two["states"]):
        assert np.abs(np.asarray(a["betas"]) - np.asarray(b["betas"])).max() <= 1e-3
        assert np.abs(np.asarray(a["weights"]) - np.asarray(b["weights"])).max() <= 1e-5
    assert one["final_score"] == two["final_score"]
