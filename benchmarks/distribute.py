"""Benchmark: training throughput (images per second) of the three training jobs under
tf.distribute, one device against two replicas, in one run.

The default model (tiny_mobilenet as config.yaml builds it for Fashion-MNIST, 28x28x1, 10
classes) on Fashion-MNIST-shaped images (random pixels: throughput does not depend on
them), each measurement in fresh processes (devices and threads are fixed when TensorFlow
starts), one after another:

- "one device": TensorFlow's default strategy, `--threads` threads;
- "two logical CPUs": MirroredStrategy over the CPU split in two (distribute.logical_cpus),
  the same threads;
- "two workers": MultiWorkerMirroredStrategy, two processes on 127.0.0.1 (TF_CONFIG),
  half the threads each (fine-tuning through quantflow's fit_workers: Keras 3's fit does
  not run under it);
- with `--gpu`, on a machine with a GPU: "GPU" (the default strategy on GPU:0) against
  "one device" on the CPU.

The jobs, timed without their tracing: train (fine_tune, the train job's path, batches
of 128: a long fit less a 5-step one), FAT (train_thresholds, w8a8-sym-pc, batches of 50:
its second epoch, with its 50-image validation) and adjustable (the search, batches of 50:
its second epoch, a bits and a weights mini-epoch, with their 50-image evaluations).
Records the figures and the machine in benchmarks/results/distribute.json (or --out).

    .venv/bin/python benchmarks/distribute.py [--threads 2] [--gpu] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.pipeline import write_result  # noqa: E402

SHAPE, CLASSES = (28, 28, 1), 10


def child(setup: str, job: str, threads: int, sizes: dict) -> dict:
    """One measurement in this (fresh) process; `setup` one, logical2, worker, gpu."""
    from quantflow.workflow.threads import configure_threads

    configure_threads(threads, 0)
    from quantflow.distribute import strategy as dist

    distribute = {"logical_cpus": 2} if setup == "logical2" else {}
    if setup not in ("gpu",):
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the CPU figures on the CPU
    dist.configure_devices(distribute)
    strategy = dist.make_strategy(distribute)
    import keras
    import numpy as np
    import tensorflow as tf
    import yaml

    from quantflow.models.registry import model_from_spec

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    spec = next(iter(config["models"].values()))
    rng = np.random.default_rng(0)
    n = sizes[job]
    images = rng.integers(0, 256, (n,) + SHAPE).astype(np.float32)
    labels = rng.integers(0, CLASSES, n).astype(np.int32)
    with dist.scope(strategy):
        keras.utils.set_random_seed(0)
        model = model_from_spec(spec, SHAPE, CLASSES)

    if job == "train":  # two fits, short and long: their difference has no tracing
        from quantflow.models.finetune import fine_tune

        batch = config["train"]["batch_size"]
        ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)
        stage = {"epochs": 1, "learning_rate": 0.004, "warmup_steps": 0}
        seconds = []
        for steps in (5, n // batch):
            start = time.perf_counter()
            fine_tune(model, ds.take(steps), None, stages=[stage], strategy=strategy)
            seconds.append(time.perf_counter() - start)
        trained, seconds = (n // batch - 5) * batch, seconds[1] - seconds[0]
    elif job == "fat":  # the second epoch: traced in the first
        from quantflow.quant.calibrate import calibrate
        from quantflow.quant.fat.train import train_thresholds
        from quantflow.quant.transform import fake_quant_model

        with dist.scope(strategy):
            qmodel = fake_quant_model(model)
        calibrate(qmodel, images[:200], 4, batch_size=50)
        ends = []
        train_thresholds(
            model,
            qmodel,
            images,
            epochs=2,
            batch_size=50,
            val_ds=images[:50],
            strategy=strategy,
            on_epoch=lambda row, improved: ends.append(time.perf_counter()),
        )
        trained, seconds = n, ends[1] - ends[0]
    else:  # the second epoch (two mini-epochs, bits then weights): traced in the first
        from quantflow.quant.adjustable.score import ScoreGraph
        from quantflow.quant.adjustable.settings import Settings, build_model
        from quantflow.quant.adjustable.settings import calibrate as calibrate_adjustable
        from quantflow.quant.adjustable.train import train as search
        from quantflow.quant.micronet.count import count_model

        settings = Settings(
            images=n, batch_size=50, calibration_batches=2, epochs=2, mini_epochs=2, swa_epochs=0
        )
        with dist.scope(strategy):
            qmodel = build_model(model, settings)
        calibrate_adjustable(qmodel, images[:100], settings)
        graph = ScoreGraph(qmodel, count_model(model), reference=settings.reference)
        split = {
            "images": images,
            "labels": labels,
            "val_images": images[:50],
            "val_labels": labels[:50],
        }
        ends = []
        search(
            model,
            qmodel,
            graph,
            split,
            settings,
            log=lambda *_: None,
            strategy=strategy,
            on_checkpoint=lambda row, best: ends.append(time.perf_counter()),
        )
        trained, seconds = n, ends[4] - ends[2]  # [0]: the initial state
    return {
        "setup": setup,
        "job": job,
        "threads": threads,
        "replicas": dist.replicas(strategy),
        "chief": dist.is_chief(strategy),
        "images": trained,
        "seconds": round(seconds, 3),
        "images_per_s": round(trained / seconds, 1),
        "devices": dist.describe(strategy),
    }


def _start(setup, job, threads, args, env=None):
    cmd = [sys.executable, __file__, "--child", setup, job, str(threads)]
    cmd += ["--sizes", json.dumps(args.sizes)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"a measurement failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def measure(setup, job, args) -> dict:
    if setup != "workers":
        return _result(_start(setup, job, args.threads, args))
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    workers = [f"127.0.0.1:{p}" for p in ports]
    procs = []
    for index in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        )
        procs.append(_start("worker", job, max(1, args.threads // 2), args, env))
    results = [_result(p) for p in procs]
    chief = next(r for r in results if r["chief"])
    return {**chief, "setup": "workers", "threads": f"{results[0]['threads']} per worker"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gpu", action="store_true", help="also the GPU against the CPU")
    parser.add_argument(
        "--sizes",
        type=json.loads,
        default={"train": 12800, "fat": 2000, "adjustable": 1200},
        help="training images per job (JSON)",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/distribute.json"))
    args = parser.parse_args()
    if args.child:
        setup, job, threads = args.child
        print(json.dumps(child(setup, job, int(threads), args.sizes)))
        return 0
    runs = []
    plan = [("one", "logical2", "workers")] + ([("gpu",)] if args.gpu else [])
    for job in ("train", "fat", "adjustable"):
        for setup in [s for group in plan for s in group]:
            runs.append(measure(setup, job, args))
            print(runs[-1], flush=True)
    rate = {(r["job"], r["setup"]): r["images_per_s"] for r in runs}
    figures = {"images_per_s": {f"{j} / {s}": v for (j, s), v in rate.items()}}
    for job in ("train", "fat", "adjustable"):
        for setup in ("logical2", "workers", "gpu"):
            if (job, setup) in rate:
                figures[f"{job}: {setup} over one device"] = round(
                    rate[job, setup] / rate[job, "one"], 3
                )
    write_result(
        args.out,
        "training throughput under tf.distribute: one device against two replicas "
        "(two logical CPUs, two local workers)" + (" and a GPU" if args.gpu else ""),
        figures,
        {},
        runs=runs,
        threads=args.threads,
        sizes=args.sizes,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
