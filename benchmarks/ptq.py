"""Benchmark: every post-training quantization variant against fp32 TFLite, side by side,
with the per-layer diagnosis and the logits error of each int8 model.

Runs the real `snakemake` command in fresh working directories on the repository's
config.yaml (weight-only grid and adjustable targets off; FAT w8a8 on, the side-by-side
reference of an int8 model with trained ranges), then the same with MobileNetV2 (alpha
0.35, trained from scratch at 32x32, as benchmarks/fat.py). Records per model: top-1 of
every variant and its Δ against tflite-fp32, the diagnosis' time and output SNR per int8
model, and the RMSE of each int8 model's logits against tflite-fp32's on the test set,
in benchmarks/results/ptq.json.

    .venv/bin/python benchmarks/ptq.py [--cores 2] [--keep DIR [--reuse]] [--only default|mobilenet]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.fat import (  # noqa: E402
    base_config,
    benchmark_parser,
    mobilenet_config,
    out_and_work,
    run,
    run_details,
    select_runs,
)
from benchmarks.pipeline import write_result  # noqa: E402


def logits_rmse(base: Path, variants: list[str], split_path: Path) -> dict:
    """RMSE of each TFLite variant's (dequantized) logits against tflite-fp32's."""
    from quantflow.data import splits as data
    from quantflow.deploy.litert import TFLiteRunner

    info = data.read_info(Path(split_path).parent / "info.json")
    split = data.Split(split_path, info["input_shape"][:2])

    def logits(path):
        runner = TFLiteRunner(path, 2)
        return np.concatenate(
            [runner.scores(runner.run(runner.prepare(x))) for x, _ in split.numpy_batches(500)]
        )

    reference = logits(base / "tflite/fp32.tflite")
    out = {}
    for variant in variants:
        if variant.startswith("tflite-"):
            path = base / "tflite" / f"{variant[len('tflite-'):]}.tflite"
        elif variant.startswith("fat-"):
            path = base / "fat" / variant[len("fat-") :] / "model.tflite"
        else:
            continue
        if path.exists():
            out[variant] = float(np.sqrt(np.mean((logits(path) - reference) ** 2)))
    return out


def model_figures(by: dict, base: Path, dataset_dir: Path) -> dict:
    fp32 = by["tflite-fp32"]
    variants = {
        v: {
            "accuracy": r["accuracy"],
            "delta_vs_fp32_pp": round(r["delta_accuracy_pp"], 3),
            "g_mean": r["g_mean"],
            "size_bytes": r["size_bytes"],
            "size_ratio": round(r["size_ratio"], 4),
            "ms_per_image_b1": r["ms_per_image_b1"],
            "tie_rate": r["tie_rate"],
            "score": r.get("score"),
        }
        for v, r in by.items()
        if v.startswith(("tflite-", "fat-", "keras-"))
    }
    diagnoses = {}
    for path in sorted((base / "eval").glob("*/diagnosis.json")):
        d = json.loads(path.read_text())
        diagnoses[path.parent.name] = {
            "seconds": round(d["seconds"], 2),
            "images": d["images"],
            "ops": d["ops"],
            "output_snr_db": round(d["output_snr_db"], 2),
            "worst": [f"{d['layers'][i]['layer']} ({d['layers'][i]['op']})" for i in d["worst"]],
        }
    int8 = [
        v
        for v in by
        if v.startswith("tflite-int8") or (v.startswith("fat-") and not v.endswith("-sim"))
    ]
    rmse = logits_rmse(base, sorted(int8), dataset_dir / "splits/test.npz")
    return {
        "fp32_accuracy": fp32["accuracy"],
        "variants": variants,
        "diagnosis": diagnoses,
        "logits_rmse_vs_fp32": {k: round(v, 4) for k, v in rmse.items()},
    }


def main() -> int:
    parser = benchmark_parser(__doc__, "ptq")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --keep: analyse the runs already there (no wall time)",
    )
    args = parser.parse_args()
    out_path, work = out_and_work(args, "ptq")
    default = base_config()
    default["adjustable"]["targets"] = None
    default["fat"]["schemes"] = ["w8a8-sym-pc"]
    default["fat"]["simulate"] = False
    runs = select_runs(default, mobilenet_config(default), args.only)
    figures, details = {}, {}
    if args.only and out_path.exists():
        previous = json.loads(out_path.read_text())
        figures, details = previous["figures"], previous["runs"]
    for model, config in runs.items():
        summary = work / model / "results/summary.json"
        if args.reuse and summary.exists():
            records, wall, cmd = (
                json.loads(summary.read_text()),
                None,
                ["snakemake", "--configfile", "-"],
            )
        else:
            records, wall, cmd = run(config, work / model, args.cores)
        by = {r["variant"]: r for r in records if r["model"] == model}
        dataset_dir = work / model / "data" / config["dataset"]["name"]
        base = work / model / "results" / config["dataset"]["name"] / model
        figures[model] = model_figures(by, base, dataset_dir)
        details[model] = run_details(work / model, wall, cmd, config)
    write_result(
        out_path,
        "every post-training quantization variant vs fp32 TFLite, the per-layer diagnosis "
        "and each int8 model's logits RMSE against fp32, side by side per run: the default "
        "config; MobileNetV2 alpha 0.35 from scratch at 32x32",
        figures,
        {},
        runs=details,
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
