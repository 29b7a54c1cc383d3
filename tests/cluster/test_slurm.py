"""The workflow on a real SLURM scheduler: the tiny Fashion-MNIST pipeline, every job
submitted with sbatch through `snakemake --profile profiles/slurm` to a single-node
cluster the test starts (see slurm.py), against the same config run locally."""

import copy
import json
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import REPO, snakemake_cmd

from quantflow.variants import timed_variant

from .conftest import PROFILE

pytestmark = [pytest.mark.cluster, pytest.mark.workflow]

CONFIG = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
CONFIG["train"]["threads"] = 2  # the same threads in both runs: same arithmetic, same model
CONFIG["weightquant"] = {"algorithms": ["bin", "fixed"], "bits": [8]}
CONFIG["fat"] = {"schemes": []}  # FAT, adjustable and the PTQ studies run in the local
CONFIG["adjustable"] = {"targets": None}  # workflow tests
CONFIG["tflite"] = {
    "calibration_images": 100,
    "calibration_sizes": [],
    "calibration_classes": [],
    "float_fallback": [],
}
CONFIG["diagnosis"] = {"images": 0}
CONFIG["variants"] = ["keras-float", "tflite-fp32", "tflite-int8"]
VARIANTS = ["keras-float", "tflite-fp32", "tflite-int8", "bin-8", "fixed-8", "fixed-8-tflite"]
# The jobs snakemake submits (`all` has nothing to run and stays local).
CLUSTER_JOBS = {
    "download": 1,
    "prepare": 1,
    "train": 1,
    "tflite": 2,
    "extract_weights": 1,
    "weightquant": 2,
    "weightonly_tflite": 1,  # fixed-8's LiteRT file
    "evaluate": len(VARIANTS),
    # bin-8 and fixed-8 take keras-float's timing
    "latency": len({timed_variant(v) for v in VARIANTS}),
    "micronet_counts": 1,
    "summary": 1,
}
METRICS = [
    "accuracy",
    "top5",
    "precision",
    "sensitivity",
    "g_mean",
    "num_samples",
    "confusion_matrix",
    "per_class_recall",
    "per_class_precision",
    "size_bytes",
]
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.")


def _clean_env(extra=None):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_"))
    }
    env.update(extra or {})
    return env


def _run(cmd, cwd, env, timeout, cluster=None):
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        logs = "\n".join(
            f"--- {p}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(Path(cwd).glob("logs/**/*.log"))
        )
        pytest.fail(
            f"snakemake failed ({proc.returncode}) in {cwd}:\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-8000:]}\n{logs}\n{cluster.logs() if cluster else ''}"
        )
    return proc, seconds


def _config(work, fashion_mnist_dir):
    config = copy.deepcopy(CONFIG)
    config["dataset"]["mirrors"] = [f"file://{fashion_mnist_dir}"]
    path = work / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def slurm_cmd(work, cfg, *args):
    """snakemake through the profile, in `work`, with `cfg`."""
    return snakemake_cmd(
        work,
        cfg,
        "--profile",
        str(PROFILE),
        # no accounting database on the test cluster (MinJobAge=600)
        "--slurm-status-command",
        "squeue",
        # tiny jobs: poll from 3 s on, not 40 (the first poll's delay)
        "--slurm-init-seconds-before-status-checks",
        "3",
        *args,
    )


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory, fashion_mnist_dir):
    """The tiny pipeline through SLURM. snakemake starts in the working directory, as a
    user would: the profile's slurm-logdir (logs/slurm) is relative to it."""
    work = tmp_path_factory.mktemp("slurm_run")
    cfg = _config(work, fashion_mnist_dir)
    proc, seconds = _run(
        slurm_cmd(work, cfg), work, slurm_cluster.env(_clean_env()), 1800, slurm_cluster
    )
    print(f"SLURM run: {seconds:.0f} s")
    return work, proc.stdout + proc.stderr, seconds


@pytest.fixture(scope="module")
def local_run(slurm_cluster, tmp_path_factory, fashion_mnist_dir):
    """The same config on the local executor (2 cores, as the cluster job gets 2 CPUs)."""
    work = tmp_path_factory.mktemp("local_run")
    cfg = _config(work, fashion_mnist_dir)
    _, seconds = _run(snakemake_cmd(work, cfg, "--cores", "2"), work, _clean_env(), timeout=900)
    print(f"local run: {seconds:.0f} s")
    return work


def test_every_job_ran_as_its_own_slurm_job(slurm_run, slurm_cluster):
    work, out, _ = slurm_run
    run_id = re.search(r"SLURM run ID: (\S+)", out).group(1)
    assert "Falling back to 'sacct'" not in out  # job states came from squeue
    submitted = SUBMITTED.findall(out)
    slurm_ids = [slurm_id for _, slurm_id, _ in submitted]
    assert len(set(slurm_ids)) == len(slurm_ids) == sum(CLUSTER_JOBS.values()), out[-5000:]

    # One SLURM log per job, where the profile puts them: logs/slurm/rule_<rule>/.../<id>.log
    logdir = work / "logs/slurm"
    logs = sorted(logdir.glob("rule_*/**/*.log"))
    assert sorted(p.stem for p in logs) == sorted(slurm_ids, key=str)
    assert (
        Counter(p.relative_to(logdir).parts[0].removeprefix("rule_") for p in logs) == CLUSTER_JOBS
    )
    for _, slurm_id, log in submitted:
        rule = Path(log).relative_to(logdir).parts[0].removeprefix("rule_")
        text = Path(log).read_text()
        # The batch script is snakemake's jobstep executor, on the node; it ran the job in
        # a job step (srun), whose snakemake finished it.
        assert "--executor slurm-jobstep" in text and f"Host: {slurm_cluster.host}" in text, text
        assert f"localrule {rule}:" in text, text
        assert (
            f"Finished jobid: 0 (Rule: {rule})" in text and "1 of 1 steps (100%) done" in text
        ), text

    # The scheduler's own record (MinJobAge=600 keeps finished jobs in squeue): every id,
    # under the run's job name, completed.
    squeue = slurm_cluster.run("squeue", "-h", "--states=all", "-o", "%i|%j|%T").stdout
    states = {i: (name, state) for i, name, state in (line.split("|") for line in squeue.split())}
    for slurm_id in slurm_ids:
        assert states.get(slurm_id) == (run_id, "COMPLETED"), (slurm_id, squeue)

    # sbatch asked for what the profile and the rules say: train gets 2 CPUs and 16 GB.
    train_id = next(s for j, s, log in submitted if "/rule_train/" in log)
    job = slurm_cluster.run("scontrol", "show", "job", train_id).stdout
    assert re.search(r"\bNumCPUs=2\b", job) and re.search(r"\bmem=16000M\b", job), job
    assert "Partition=debug" in job
    # timing jobs ask for a node of their own (profiles/slurm: --exclusive)
    latency_id = next(s for j, s, log in submitted if "/rule_latency/" in log)
    job = slurm_cluster.run("scontrol", "show", "job", latency_id).stdout
    assert re.search(r"\bOverSubscribe=NO\b", job), job


def test_same_metrics_as_a_local_run(slurm_run, local_run):
    work, _, _ = slurm_run
    cluster = {r["variant"]: r for r in json.loads((work / "results/summary.json").read_text())}
    local = {r["variant"]: r for r in json.loads((local_run / "results/summary.json").read_text())}
    assert list(cluster) == list(local) == VARIANTS
    for variant in VARIANTS:
        for key in METRICS:
            assert cluster[variant][key] == local[variant][key], (variant, key)
    train = [
        json.loads((w / "results/fashion_mnist/tiny/float/train.json").read_text())
        for w in (work, local_run)
    ]
    assert train[0]["threads"] == train[1]["threads"] == 2
    assert train[0]["history"] == train[1]["history"]
    assert cluster["keras-float"]["accuracy"] > 0.5


FAT_SCHEME = "w8a8-sym-pc"


def test_a_two_task_fat_job_forms_its_cluster_through_slurm(slurm_run, slurm_cluster):
    """The FAT job asked for two SLURM tasks (the profile's multi-node recipe: mpi and
    tasks): its batch script starts one TensorFlow worker per task with srun, they form
    a cluster through SlurmClusterResolver, train together and the chief writes."""
    work, _, _ = slurm_run
    config = yaml.safe_load((work / "tiny.yaml").read_text())
    config["fat"] = {
        **yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())["fat"],
        "schemes": [FAT_SCHEME],
        "images": 200,
        "validation_images": 100,
        "threads": 1,
    }
    cfg = work / "fat.yaml"
    cfg.write_text(yaml.safe_dump(config))
    target = f"results/fashion_mnist/tiny/fat/{FAT_SCHEME}/fat.json"
    cmd = slurm_cmd(
        work,
        cfg,
        "--set-resources",
        "fat:tasks=2",
        "fat:mpi='srun'",
        "--",
        target,
    )
    proc, seconds = _run(cmd, work, slurm_cluster.env(_clean_env()), 900, slurm_cluster)
    print(f"two-task FAT job through SLURM: {seconds:.0f} s")
    out = proc.stdout + proc.stderr
    (slurm_id,) = [s for _, s, log in SUBMITTED.findall(out) if "/rule_fat/" in log]
    job = slurm_cluster.run("scontrol", "show", "job", slurm_id).stdout
    assert re.search(r"\bNumTasks=2\b", job), job
    summary = json.loads((work / target).read_text())
    assert summary["replicas"] == 2 and summary["final_val_rmse"] <= summary["initial_val_rmse"]
    log = (work / f"logs/fat/fashion_mnist/tiny/{FAT_SCHEME}.log").read_text()
    assert "starting 2 workers, one per SLURM task: srun --ntasks=2" in log, log[-3000:]
    for task in (0, 1):  # srun labels each worker's lines with its task number
        assert re.search(
            rf"^{task}: training on \w+: 2 replicas \(/job:worker/replica:0/task:{task}/",
            log,
            re.M,
        ), log[-3000:]
    assert not (work / f"results/fashion_mnist/tiny/fat/{FAT_SCHEME}/.resume").exists()
