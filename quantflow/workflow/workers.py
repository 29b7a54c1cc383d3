"""A training job on several SLURM tasks: the job's batch process starts one worker per
task with srun (the script run again), and each worker logs through srun.

The SLURM executor runs a job with the `mpi` resource as its batch process, without a job
step, and leaves it only the job id of the SLURM environment; with `tasks: N` (or `nodes`
x `tasks_per_node`) the script starts N copies of itself as one job step, which find each
other as TensorFlow workers (quantflow.distribute.strategy: SlurmClusterResolver)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from quantflow.errors import QuantflowError
from quantflow.workflow.logs import run_logged


def tasks_to_start(resources: dict, environ=None) -> int:
    """The workers a training job starts itself, one per SLURM task: given the job's
    resources (`mpi`: the launcher, e.g. "srun"; `tasks`, or `nodes` x `tasks_per_node`),
    in a SLURM job's batch process (not already a step's task), when they ask for several
    tasks; 0 otherwise (then the job is one process)."""
    environ = os.environ if environ is None else environ
    if not resources.get("mpi") or "SLURM_JOB_ID" not in environ or "SLURM_STEP_ID" in environ:
        return 0
    tasks = resources.get("tasks") or (resources.get("nodes") or 1) * (
        resources.get("tasks_per_node") or 1
    )
    return int(tasks) if int(tasks) > 1 else 0


def srun_workers(launcher: str, tasks: int, cpus: int, argv: list[str]) -> None:
    """Run `argv` as `tasks` tasks of a job step (`launcher`: srun and its options, such
    as "srun --gpus-per-task=1"), `cpus` CPUs each, and wait for them: one TensorFlow
    worker per task, finding the others through SlurmClusterResolver. A task failing stops
    the others (--kill-on-bad-exit). Their output, each line labelled with its task
    number, goes where this process's goes."""
    cmd = [
        *shlex.split(launcher),
        f"--ntasks={tasks}",
        f"--cpus-per-task={cpus}",
        "--kill-on-bad-exit=1",
        "--label",
        *argv,
    ]
    print(f"starting {tasks} workers, one per SLURM task: {shlex.join(cmd)}", flush=True)
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise QuantflowError(
            f"the job's workers failed (exit status {code}; their lines above, labelled by "
            "task); rerun the job"
        )


def run_logged_workers(log_path: str, resources: dict, threads: int, main, *args, **kwargs):
    """`run_logged` for a training job that may span several SLURM tasks. When its
    `resources` ask for them (`mpi` and `tasks`, see tasks_to_start) and it runs as a SLURM job, it starts
    this same script once per task (`threads` CPUs each) and waits for them; each of those
    workers runs `main`, its output labelled by task and gathered into the log by srun.
    Anywhere else, `run_logged`."""
    tasks = tasks_to_start(resources)
    if tasks:
        argv = [sys.executable, sys.argv[0]]
        return run_logged(log_path, srun_workers, resources["mpi"], tasks, threads, argv)
    if _step_tasks() > 1:  # a worker: its output goes through srun to the log
        return run_logged(None, main, *args, **kwargs)
    return run_logged(log_path, main, *args, **kwargs)


def _step_tasks(environ=None) -> int:
    """The tasks of the job step this process is one of (1 outside a step)."""
    environ = os.environ if environ is None else environ
    value = environ.get("SLURM_STEP_NUM_TASKS", "")
    return int(value) if "SLURM_STEP_ID" in environ and value.isdigit() else 1
