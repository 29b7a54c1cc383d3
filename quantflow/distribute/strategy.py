"""The `tf.distribute` strategy of a training job, from config (`distribute:`) and what the
job was given.

    strategy: auto          one device: TensorFlow's default strategy (the computation is
                            exactly the single-device one); several GPUs (or
                            `logical_cpus` >= 2): MirroredStrategy over them; a SLURM
                            allocation with several tasks, or a TF_CONFIG naming several
                            workers: MultiWorkerMirroredStrategy across them
    strategy: default | mirrored | multi_worker     that one, whatever is found
    logical_cpus: N         split the CPU into N logical devices (tests, and comparing
                            replica counts on a machine without GPUs)

Multi-worker clusters come from TensorFlow's own resolvers: `SlurmClusterResolver` inside a
SLURM job step with several tasks (one worker per task), `TFConfigClusterResolver` from
TF_CONFIG otherwise. Call `configure_devices` before TensorFlow runs anything (logical
devices cannot be made afterwards), then `make_strategy`.

The training code (quantflow.models.finetune, quantflow.quant.fat.train,
quantflow.quant.adjustable.train) asks `replicas` whether to take its distributed path:
with one replica it runs exactly as without a strategy, byte for byte."""

from __future__ import annotations

import contextlib
import json
import os

from quantflow.errors import QuantflowError

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
DEFAULTS = {"strategy": "auto", "logical_cpus": None}


def settings(config: dict | None) -> dict:
    """The `distribute:` section with defaults, checked."""
    merged = {**DEFAULTS, **(config or {})}
    unknown = sorted(set(merged) - set(DEFAULTS))
    if unknown:
        raise QuantflowError(f"distribute: unknown keys {unknown}; known: {sorted(DEFAULTS)}")
    if merged["strategy"] not in STRATEGIES:
        raise QuantflowError(
            f"distribute.strategy must be one of {', '.join(STRATEGIES)}, got "
            f"{merged['strategy']!r}"
        )
    cpus = merged["logical_cpus"]
    if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1):
        raise QuantflowError(f"distribute.logical_cpus must be a whole number >= 1, got {cpus!r}")
    return merged


def configure_devices(config: dict | None) -> None:
    """Make the logical CPU devices `logical_cpus` asks for (before TensorFlow runs)."""
    cpus = settings(config)["logical_cpus"]
    if not cpus or cpus < 2:
        return
    import tensorflow as tf

    physical = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            physical, [tf.config.LogicalDeviceConfiguration()] * cpus
        )
    except RuntimeError as e:  # TensorFlow already initialised its devices
        raise QuantflowError(
            f"distribute.logical_cpus: the CPU can no longer be split ({e}); "
            "configure_devices must run before anything uses TensorFlow"
        ) from e


def slurm_tasks(environ=None) -> int:
    """The tasks of the SLURM job step this process is one of (1 outside a step: outside
    SLURM, and in a job's batch script, which is one process whatever the allocation)."""
    environ = os.environ if environ is None else environ
    if "SLURM_STEP_ID" not in environ:
        return 1
    value = environ.get("SLURM_STEP_NUM_TASKS", "")
    return int(value) if value.isdigit() else 1


def worker_port(environ=None) -> int:
    """The first port of a SLURM job's workers (task i of a node listens on port + i):
    QUANTFLOW_WORKER_PORT, else one drawn from the job id, so that two multi-task jobs on
    one node do not collide (unless their ids agree modulo 1000)."""
    environ = os.environ if environ is None else environ
    if environ.get("QUANTFLOW_WORKER_PORT"):
        return int(environ["QUANTFLOW_WORKER_PORT"])
    job = environ.get("SLURM_JOB_ID", "0")
    return 20000 + (int(job) % 1000 if job.isdigit() else 0) * 32


def tf_config_workers(environ=None) -> int:
    """The workers (and chief) TF_CONFIG names (0 without TF_CONFIG)."""
    environ = os.environ if environ is None else environ
    if not environ.get("TF_CONFIG"):
        return 0
    try:
        cluster = json.loads(environ["TF_CONFIG"]).get("cluster", {})
    except (ValueError, AttributeError) as e:
        raise QuantflowError(f"TF_CONFIG is not valid JSON: {e}") from e
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def choose(config: dict | None, gpus: int, cpus: int, environ=None) -> str:
    """The strategy `auto` resolves to (or the one config names), given the GPUs and
    logical CPUs this process sees and its environment."""
    wanted = settings(config)["strategy"]
    if wanted != "auto":
        return wanted
    if slurm_tasks(environ) > 1 or tf_config_workers(environ) > 1:
        return "multi_worker"
    if gpus > 1 or (gpus == 0 and cpus > 1):
        return "mirrored"
    return "default"


def make_strategy(config: dict | None, environ=None):
    """The job's tf.distribute strategy (see the module doc)."""
    import tensorflow as tf

    environ = os.environ if environ is None else environ
    wanted = settings(config)["strategy"]
    cluster = slurm_tasks(environ) > 1 or tf_config_workers(environ) > 1
    # A cluster's strategy must come before anything asks TensorFlow for its devices
    # (collective ops are configured at start-up); the others choose by the devices.
    if not (wanted == "multi_worker" or (wanted == "auto" and cluster)):
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        kind = choose(config, len(gpus), len(cpus), environ)
        if kind == "default":
            return tf.distribute.get_strategy()
        return tf.distribute.MirroredStrategy(gpus or cpus)
    if slurm_tasks(environ) > 1:
        # TensorFlow's SLURM resolver gives the cluster (hosts, ports, this task's
        # place). Its own GPU split (nvidia-smi, CUDA_VISIBLE_DEVICES) is left out: it
        # fails on CPU nodes and would come after TensorFlow has found its devices.
        # SLURM binds GPUs to tasks (--gpus-per-task); each worker uses those it sees.
        tasks = slurm_tasks(environ)
        slurm = tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=worker_port(environ),
            gpus_per_node=tasks,
            gpus_per_task=1,
            auto_set_gpu=False,
        )
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            slurm.cluster_spec(),
            task_type=slurm.task_type,
            task_id=slurm.task_id,
            rpc_layer="grpc",
            num_accelerators={"GPU": len(tf.config.list_physical_devices("GPU"))},
        )
    elif tf_config_workers(environ) > 1:
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    else:
        raise QuantflowError(
            "distribute.strategy multi_worker needs a cluster: a SLURM job step with several "
            "tasks (srun --ntasks N) or a TF_CONFIG naming several workers"
        )
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)


def is_multi_worker(strategy) -> bool:
    """Whether the strategy spans several processes (a cluster of workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return bool(resolver is not None and getattr(resolver, "task_type", None))


@contextlib.contextmanager
def worker_failures(strategy, resume_note: str):
    """Turn the error a multi-worker job's surviving workers get when a peer dies (its
    collectives aborted, within about ten seconds, by TensorFlow's coordination service)
    into one line that says what to do: rerun the whole job, which resumes."""
    if not is_multi_worker(strategy):
        yield
        return
    import tensorflow as tf

    try:
        yield
    except (
        tf.errors.UnavailableError,
        tf.errors.DeadlineExceededError,
        tf.errors.CancelledError,
        tf.errors.FailedPreconditionError,
        tf.errors.AbortedError,
    ) as e:
        first = (e.message or str(e)).strip().splitlines()[0][:300]
        raise QuantflowError(
            f"a worker of this job's cluster failed or left ({type(e).__name__}: {first}); "
            f"rerun the job on all its workers: {resume_note}"
        ) from e


def scope(strategy):
    """A fresh `strategy.scope()` (a scope cannot be entered twice), or a no-op for None."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def replicas(strategy) -> int:
    """Replicas in sync (1: the single-device computation)."""
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def is_chief(strategy) -> bool:
    """Whether this process writes the job's outputs: always, except a multi-worker job's
    non-chief workers (the chief is the "chief" task, else worker 0)."""
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    cluster = resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and int(resolver.task_id) == 0


def describe(strategy) -> str:
    """One line for the job's log."""
    name = type(strategy).__name__
    n = replicas(strategy)
    if n == 1 and name.startswith("_Default"):
        return "one device (TensorFlow's default strategy)"
    devices = getattr(getattr(strategy, "extended", None), "worker_devices", ())
    return f"{name}: {n} replicas ({', '.join(devices)})"
