"""Benchmark: FAT against int8 post-training quantization, side by side in one run.

Runs the real `snakemake` command in fresh working directories: the repository's
config.yaml (weight-only grid off; the targets apply to this run), then the same config
with MobileNetV2 (alpha 0.35) trained from scratch on the same offline Fashion-MNIST data,
resized to 32x32. Each run evaluates tflite-fp32, int8 PTQ (tflite-int8) and the FAT
schemes of config.yaml (w8a8-sym-pc, w4a8-sym-pc: int8 TFLite in LiteRT, and their
fake-quant simulation) side by side. Records the figures against the targets in
benchmarks/results/fat.json.

    .venv/bin/python benchmarks/fat.py [--cores 2] [--keep DIR] [--only default|mobilenet]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.pipeline import rule_benchmarks, write_result  # noqa: E402

TARGETS = {
    "w8a8_vs_fp32_pp_max_abs": 0.1,  # FAT w8a8 (int8 TFLite) within 0.1 pp of fp32 TFLite
    "w8a8_vs_ptq_pp_min": 0.0,  # ... and at least as accurate as int8 PTQ
    "w4a8_vs_fp32_pp_max_drop": 1.0,  # FAT w4a8 within 1 pp of fp32
    "training_seconds_max": 120.0,  # threshold training of the default model, 2 cores
}
DEFAULT_MODEL = "tiny_mobilenet"
MOBILENET = {
    "mobilenet_v2_035": {"arch": "mobilenet_v2", "alpha": 0.35, "weights": "none", "dropout": 0.2}
}


def model_figures(records: dict, fat_dir: Path) -> dict:
    fp32, ptq = records["tflite-fp32"], records["tflite-int8"]
    out = {
        "fp32_accuracy": fp32["accuracy"],
        "ptq_int8_accuracy": ptq["accuracy"],
        "ptq_vs_fp32_pp": round(ptq["delta_accuracy_pp"], 3),
        "fp32_size_bytes": fp32["size_bytes"],
        "ptq_size_bytes": ptq["size_bytes"],
    }
    for scheme_dir in sorted(p for p in fat_dir.iterdir() if p.is_dir()):
        scheme = scheme_dir.name
        summary = json.loads((scheme_dir / "fat.json").read_text())
        row = {
            "training_seconds": round(summary["seconds"], 1),
            "steps": summary["steps"],
            "val_rmse_calibrated": summary["initial_val_rmse"],
            "val_rmse_trained": summary["final_val_rmse"],
            "packed_size_bytes": summary["packed_size_bytes"],
        }
        for variant, key in ((f"fat-{scheme}", "tflite"), (f"fat-{scheme}-sim", "sim")):
            r = records.get(variant)
            if r:
                row[f"{key}_accuracy"] = r["accuracy"]
                row[f"{key}_vs_fp32_pp"] = round(r["delta_accuracy_pp"], 3)
                row[f"{key}_vs_ptq_pp"] = round(100 * (r["accuracy"] - ptq["accuracy"]), 3)
                row[f"{key}_size_bytes"] = r["size_bytes"]
                row[f"{key}_ms_per_image_batched"] = round(r["ms_per_image_batched"], 4)
        check = scheme_dir / "tflite.json"
        if check.exists():
            check = json.loads(check.read_text())
            row["tflite_vs_sim_top1_agreement"] = check["top1_agreement"]
            row["tflite_weight_storage"] = check["weight_storage"]
        out[scheme] = row
    return out


def targets_met(fig: dict) -> dict:
    w8, w4 = fig.get("w8a8-sym-pc", {}), fig.get("w4a8-sym-pc", {})
    met = {}
    if "tflite_accuracy" in w8:
        met["w8a8_vs_fp32_pp_max_abs"] = (
            abs(w8["tflite_vs_fp32_pp"]) <= TARGETS["w8a8_vs_fp32_pp_max_abs"]
        )
        met["w8a8_vs_ptq_pp_min"] = w8["tflite_vs_ptq_pp"] >= TARGETS["w8a8_vs_ptq_pp_min"]
    if "tflite_accuracy" in w4:
        met["w4a8_vs_fp32_pp_max_drop"] = (
            -w4["tflite_vs_fp32_pp"] <= TARGETS["w4a8_vs_fp32_pp_max_drop"]
        )
    if w8:
        met["training_seconds_max"] = (
            max(row["training_seconds"] for row in fig.values() if isinstance(row, dict))
            <= TARGETS["training_seconds_max"]
        )
    return met


def run(config: dict, work: Path, cores: str) -> tuple[list[dict], float, list[str]]:
    """The real snakemake command on `config` in `work`: summary records, wall seconds."""
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "results", ignore_errors=True)
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [
        str(snakemake),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(work / "config.yaml"),
        "--cores",
        cores,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(proc.returncode)
    return json.loads((work / "results/summary.json").read_text()), wall, cmd


def run_details(work: Path, wall: float, cmd: list[str], config: dict) -> dict:
    """What a benchmark records of one `run`: wall time, config, command, rule times."""
    return {
        "wall_seconds": None if wall is None else round(wall, 1),
        "config": config,
        "command": " ".join(cmd[:1] + cmd[cmd.index("--configfile") :]),
        "rules": rule_benchmarks(work / "results"),
    }


def benchmark_parser(doc: str, name: str) -> argparse.ArgumentParser:
    """The options of a two-run benchmark (the default model, then MobileNetV2)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--cores", default="2")
    parser.add_argument("--keep", help="run in this directory and keep it")
    parser.add_argument(
        "--only",
        choices=["default", "mobilenet"],
        help="one of the two runs; its figures replace that run's in --out",
    )
    parser.add_argument("--out", help=f"default: benchmarks/results/{name}.json")
    return parser


def out_and_work(args, name: str) -> tuple[Path, Path]:
    """The result file and the working directory of a benchmark run."""
    out_path = Path(args.out or REPO / f"benchmarks/results/{name}.json")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix=f"quantflow-{name}-"))
    return out_path, work


def base_config() -> dict:
    """config.yaml without the weight-only grid."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["weightquant"]["algorithms"] = []
    return config


def mobilenet_config(default: dict) -> dict:
    """`default` for MobileNetV2 (alpha 0.35) from scratch at 32x32."""
    mobilenet = json.loads(json.dumps(default))
    mobilenet["dataset"]["image_size"] = [32, 32]  # MobileNetV2's minimum input
    mobilenet["models"] = MOBILENET
    return mobilenet


def select_runs(default: dict, mobilenet: dict, only: str | None) -> dict:
    """{model: config} of the runs to make (`--only` one of them)."""
    runs = {DEFAULT_MODEL: default, **{name: mobilenet for name in MOBILENET}}
    if only:
        runs = {k: v for k, v in runs.items() if (k == DEFAULT_MODEL) == (only == "default")}
    return runs


def main() -> int:
    args = benchmark_parser(__doc__, "fat").parse_args()
    out_path, work = out_and_work(args, "fat")
    default = base_config()
    runs = select_runs(default, mobilenet_config(default), args.only)
    figures, met, details = {}, {}, {}
    if args.only and out_path.exists():  # keep the other run's figures
        previous = json.loads(out_path.read_text())
        figures, met, details = previous["figures"], previous["targets_met"], previous["runs"]
    for model, config in runs.items():
        records, wall, cmd = run(config, work / model, args.cores)
        by = {r["variant"]: r for r in records if r["model"] == model}
        figures[model] = model_figures(
            by, work / model / "results" / config["dataset"]["name"] / model / "fat"
        )
        met[model] = targets_met(figures[model]) if model == DEFAULT_MODEL else {}
        details[model] = run_details(work / model, wall, cmd, config)
    write_result(
        out_path,
        "FAT vs int8 PTQ vs fp32 TFLite, side by side per run: the default config "
        "(weight-only grid off); MobileNetV2 alpha 0.35 from scratch at 32x32",
        figures,
        met,
        targets=TARGETS,
        targets_apply_to=DEFAULT_MODEL,
        runs=details,
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
