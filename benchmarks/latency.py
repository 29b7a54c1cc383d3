"""Benchmark: why latency is timed by a job that holds every core.

The default model (tiny_mobilenet, as config.yaml builds it for Fashion-MNIST) as fp32 and
full-int8 TFLite, timed by quantflow.evaluate's own functions in LiteRT, side by side in one
process: first with the machine to themselves (what the workflow's `latency` job gets), then
with one busy process per core (what a timing job sharing the cores with training or
evaluation jobs would get). Records ms per image and the int8 / fp32 speed ratio of each
condition in benchmarks/results/latency.json.

    .venv/bin/python benchmarks/latency.py [--threads 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from quantflow.workflow.environment import machine_description  # noqa: E402
from quantflow.workflow.environment import package_versions  # noqa: E402


def _burn(stop):
    """Keep one core busy with float work until `stop` is set."""
    os.environ["OMP_NUM_THREADS"] = "1"
    a = np.random.default_rng(0).normal(size=(256, 256)).astype(np.float32)
    while not stop.is_set():
        a = np.tanh(a @ a.T * 1e-3)


def models(workdir: Path) -> dict[str, Path]:
    """fp32 and int8 TFLite files of the default architecture (weights untrained: the
    arithmetic, and so the time, is the same)."""
    from quantflow.models.registry import model_from_spec
    from quantflow.deploy.convert import convert

    model = model_from_spec(
        {"arch": "tiny_mobilenet", "width": 1.0, "dropout": 0.2, "head": 1024}, [28, 28, 1], 10
    )
    calibration = np.random.default_rng(0).uniform(0, 255, (64, 28, 28, 1)).astype(np.float32)
    paths = {}
    for fmt in ("fp32", "int8"):
        paths[fmt] = workdir / f"{fmt}.tflite"
        paths[fmt].write_bytes(convert(model, fmt, calibration))
    return paths


def time_models(paths, images, threads, batch_size, latency_images, batches):
    from quantflow.evaluate.latency import latency_batch1, latency_batched, spread
    from quantflow.evaluate.runners import load_runner

    out = {}
    for fmt, path in paths.items():
        runner = load_runner(path, threads)
        chunks = [images[i : i + batch_size] for i in range(0, batch_size * batches, batch_size)]
        out[fmt] = {
            "ms_per_image_b1": spread(latency_batch1(runner, images, latency_images))[0],
            "ms_per_image_batched": spread(latency_batched(runner, chunks))[0],
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=1, help="LiteRT threads (evaluate.latency_threads)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/latency.json"))
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    batch_size, latency_images, batches = 250, 500, 4  # config.yaml's evaluate section
    images = np.random.default_rng(1).uniform(0, 255, (1000, 28, 28, 1)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = models(Path(tmp))
        rounds = {"exclusive": [], "shared": []}
        for _ in range(args.rounds):  # alternate, so drift in the machine hits both alike
            rounds["exclusive"].append(
                time_models(paths, images, args.threads, batch_size, latency_images, batches)
            )
            stop = mp.Event()
            burners = [mp.Process(target=_burn, args=(stop,)) for _ in range(os.cpu_count() or 1)]
            for p in burners:
                p.start()
            time.sleep(0.5)
            try:
                rounds["shared"].append(
                    time_models(paths, images, args.threads, batch_size, latency_images, batches)
                )
            finally:
                stop.set()
                for p in burners:
                    p.join()
    figures = {}
    for condition, runs in rounds.items():
        med = {
            fmt: {k: float(np.median([r[fmt][k] for r in runs])) for k in runs[0][fmt]}
            for fmt in runs[0]
        }
        ratios = {k: [r["fp32"][k] / r["int8"][k] for r in runs] for k in runs[0]["fp32"]}
        figures[condition] = {
            "ms_per_image": med,
            "int8_speed_ratio_median": {
                k: round(float(np.median(v)), 3) for k, v in ratios.items()
            },
            "int8_speed_ratio_range": {
                k: [round(min(v), 3), round(max(v), 3)] for k, v in ratios.items()
            },
        }
    result = {
        "benchmark": "fp32 vs int8 TFLite latency (LiteRT, default architecture), alone and "
        "with one busy process per core, alternating, in one process",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "versions": package_versions(),
        "threads": args.threads,
        "rounds": args.rounds,
        "batch_size": batch_size,
        "latency_images": latency_images,
        "latency_batches": batches,
        "figures": figures,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
