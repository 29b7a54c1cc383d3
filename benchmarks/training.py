"""Benchmark: training images per second of the workflow's training path against a plain
`model.fit`, at 1 and 2 threads, in one run.

The default model (tiny_mobilenet as config.yaml builds it for Fashion-MNIST, built by
quantflow.models) is trained for `--steps` batches of 128 by
- "quantflow": quantflow.models.finetune.fine_tune on quantflow.data.Split.batches (the train
  job's own path: tf.data from the prepared split, its schedule, progress and best-epoch
  callbacks), and
- "plain": model.fit on the same images as numpy arrays, Adam, nothing else;
each in a fresh process (threads are fixed when TensorFlow starts), one after another,
timed over one epoch's worth of steps from a freshly compiled model (both pay their
tracing once, as the train job does per stage). Records images per second and the ratios in
benchmarks/results/training.json: the workflow should train as fast as a plain fit, and
the figures say how many threads the train job should take.

    .venv/bin/python benchmarks/training.py [--data DIR] [--steps 430]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.pipeline import write_result  # noqa: E402


def child(kind: str, threads: int, data_dir: str, steps: int) -> dict:
    from quantflow.workflow.threads import configure_threads

    configure_threads(threads, 0)
    import keras
    import numpy as np
    import yaml

    from quantflow.data import splits as data
    from quantflow.models.finetune import fine_tune
    from quantflow.models.registry import model_from_spec

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    spec = next(iter(config["models"].values()))
    batch = config["train"]["batch_size"]
    info = data.read_info(Path(data_dir) / "info.json")
    split = data.Split(Path(data_dir) / "train.npz", info["input_shape"][:2])
    images = steps * batch
    model = model_from_spec(spec, info["input_shape"], info["num_classes"])
    if kind == "quantflow":
        ds = split.batches(batch, shuffle=True, seed=0)

        def run(n):
            stage = {"epochs": 1, "learning_rate": 0.004, "warmup_steps": 0}
            return fine_tune(model, ds.take(n), None, stages=[stage])

    else:
        x = np.concatenate([xb for xb, _ in split.numpy_batches(1000)])[:images]
        y = np.asarray(split.labels[:images])

        def run(n):
            model.compile(
                optimizer=keras.optimizers.Adam(0.004),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
            return model.fit(
                x[: n * batch], y[: n * batch], batch_size=batch, epochs=1, shuffle=True, verbose=0
            )

    start = time.perf_counter()
    run(steps)
    seconds = time.perf_counter() - start
    return {
        "kind": kind,
        "threads": threads,
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        default=str(REPO / "data/fashion_mnist/splits"),
        help="a prepared split directory (train.npz, info.json)",
    )
    parser.add_argument("--steps", type=int, default=430, help="default: an epoch of 55,000 at 128")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "THREADS"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/training.json"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.data, args.steps)))
        return 0
    runs = []
    for threads in (1, 2):
        for kind in ("quantflow", "plain"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    kind,
                    str(threads),
                    "--data",
                    args.data,
                    "--steps",
                    str(args.steps),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(runs[-1])
    rate = {(r["kind"], r["threads"]): r["images_per_s"] for r in runs}
    figures = {
        "images_per_s": {
            f"{k} {t} thread{'s' if t > 1 else ''}": round(v, 1) for (k, t), v in rate.items()
        },
        "quantflow_over_plain_1_thread": round(rate["quantflow", 1] / rate["plain", 1], 3),
        "quantflow_over_plain_2_threads": round(rate["quantflow", 2] / rate["plain", 2], 3),
        "quantflow_2_over_1_threads": round(rate["quantflow", 2] / rate["quantflow", 1], 3),
    }
    met = {
        "quantflow_at_least_0.9_of_plain": min(
            figures["quantflow_over_plain_1_thread"], figures["quantflow_over_plain_2_threads"]
        )
        >= 0.9
    }
    write_result(
        args.out,
        "training images per second: the train job's path against a plain "
        "model.fit, at 1 and 2 threads",
        figures,
        met,
        runs=runs,
        steps=args.steps,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
