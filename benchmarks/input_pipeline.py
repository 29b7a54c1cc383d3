"""Benchmark: is the image-list loader fast enough to feed training?

Writes `--images` JPEGs of ImageNet's typical size (500x375, random smooth content) to a
temporary folder, then measures, in one run on this machine:
  - loader: images per second quantflow.data.stream.make_dataset delivers at 224x224
    (decode with OpenCV, resize the shorter side, centre crop, batch), second pass;
  - train step: images per second of MobileNetV2 (alpha 1.0, 1000 classes) training at
    224x224 on in-memory batches (no input cost at all);
  - both together: training fed by the loader.
Target: the loader delivers at least as many images per second as the training step
consumes, so the loader is not the bottleneck. Figures go to
benchmarks/results/input_pipeline.json.

    .venv/bin/python benchmarks/input_pipeline.py [--images 512] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quantflow.workflow.environment import machine_description  # noqa: E402
from quantflow.workflow.threads import configure_threads  # noqa: E402
from quantflow.workflow.environment import package_versions  # noqa: E402


def write_jpegs(folder: Path, count: int, seed: int = 0) -> list[tuple[Path, int]]:
    import cv2

    rng = np.random.default_rng(seed)
    entries = []
    for i in range(count):
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)  # smooth, photo-like
        image = cv2.resize(small, (500, 375), interpolation=cv2.INTER_CUBIC)
        path = folder / f"img_{i:05d}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        entries.append((path, int(i % 1000)))
    return entries


def images_per_second(dataset, count_images: int) -> float:
    start = time.perf_counter()
    seen = 0
    for images, _ in dataset:
        seen += int(images.shape[0])
    assert seen == count_images, (seen, count_images)
    return seen / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/input_pipeline.json"))
    args = parser.parse_args()
    configure_threads(args.threads, seed=0)
    import keras
    import tensorflow as tf

    from quantflow.data.stream import make_dataset
    from quantflow.models.keras_apps import build_zoo_model

    with tempfile.TemporaryDirectory(prefix="quantflow-jpegs-") as tmp:
        entries = write_jpegs(Path(tmp), args.images)
        loader = make_dataset(entries, (224, 224), args.batch_size)
        images_per_second(loader, len(entries))  # first pass: page cache, AUTOTUNE warm-up
        loader_ips = images_per_second(loader, len(entries))

        model = build_zoo_model("mobilenet_v2", (224, 224, 3), 1000, alpha=1.0)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        x = tf.random.uniform((args.batch_size, 224, 224, 3), 0, 255)
        y = tf.zeros((args.batch_size,), tf.int32)
        synthetic = tf.data.Dataset.from_tensors((x, y)).repeat(args.train_steps)
        model.fit(synthetic.take(2), verbose=0)  # trace and warm up
        start = time.perf_counter()
        model.fit(synthetic, verbose=0)
        train_ips = args.train_steps * args.batch_size / (time.perf_counter() - start)

        fed = loader.take(args.train_steps)
        model.fit(fed.take(1), verbose=0)
        start = time.perf_counter()
        model.fit(fed, verbose=0)
        fed_ips = args.train_steps * args.batch_size / (time.perf_counter() - start)

    result = {
        "benchmark": "image-list loader vs MobileNetV2 training step at 224x224",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "versions": package_versions(),
        "settings": {
            "images": args.images,
            "jpeg_size": [500, 375],
            "batch_size": args.batch_size,
            "threads": args.threads,
            "train_steps": args.train_steps,
        },
        "figures": {
            "loader_images_per_s": round(loader_ips, 1),
            "train_step_images_per_s": round(train_ips, 2),
            "train_fed_by_loader_images_per_s": round(fed_ips, 2),
            "loader_over_train_ratio": round(loader_ips / train_ips, 2),
        },
        "target": "loader_images_per_s >= train_step_images_per_s",
        "target_met": loader_ips >= train_ips,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["figures"], indent=2), "target met:", result["target_met"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
