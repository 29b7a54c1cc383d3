"""Benchmark: how long snakemake takes to plan a large sweep (dry run, nothing executed).

A cluster run starts with this: snakemake reads the config, validates it, builds the DAG
and decides what to run before the first sbatch. The sweep: MODELS tiny_mobilenet widths
x bin and fixed x BITS bit widths, every variant evaluated (default: 8 x 2 x 16, 572 jobs),
planned from an empty working directory with the real `snakemake -n` command, REPEATS
times. Records the job count and the seconds (each run, and the median) against the
target in benchmarks/results/plan.json (and prints them).

    .venv/bin/python benchmarks/plan.py [--models 8] [--bits 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quantflow.workflow.environment import machine_description  # noqa: E402
from quantflow.workflow.environment import package_versions  # noqa: E402

TARGETS = {"jobs_min": 500, "seconds_max": 10.0}


def sweep_config(models: int, bits: int) -> dict:
    """config.yaml (Fashion-MNIST) with MODELS models and bin/fixed at 1..BITS bits. The
    whole file: `--directory` makes the Snakefile's `configfile: config.yaml` relative to
    the (empty) working directory."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    return config | {
        "models": {
            f"tiny_w{i + 1:02d}": {"arch": "tiny_mobilenet", "width": 0.25 * (i + 1)}
            for i in range(models)
        },
        "weightquant": {"algorithms": ["bin", "fixed"], "bits": list(range(1, bits + 1))},
    }


def plan(work: Path, configfile: Path) -> tuple[int, float, str]:
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [
        str(snakemake),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(configfile),
        "--dry-run",
        "--quiet",
        "rules",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    seconds = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"snakemake -n failed ({proc.returncode}):\n{out[-4000:]}")
    total = re.search(r"^total\s+(\d+)\s*$", out, re.MULTILINE)
    if not total:
        raise SystemExit(f"no job count in the dry run's output:\n{out[-4000:]}")
    return int(total.group(1)), seconds, " ".join(cmd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--bits", type=int, default=16, help="bit widths 1..BITS")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/plan.json"))
    args = parser.parse_args()

    config = sweep_config(args.models, args.bits)
    runs = []
    with tempfile.TemporaryDirectory(prefix="quantflow-plan-") as tmp:
        configfile = Path(tmp) / "sweep.yaml"
        configfile.write_text(yaml.safe_dump(config))
        for i in range(args.repeats):
            work = Path(tmp) / f"work{i}"  # empty every time: no .snakemake, no results
            work.mkdir()
            jobs, seconds, cmd = plan(work, configfile)
            runs.append({"jobs": jobs, "seconds": round(seconds, 3)})
            print(f"run {i + 1}: {jobs} jobs planned in {seconds:.2f} s", flush=True)
    jobs = runs[0]["jobs"]
    median = statistics.median(r["seconds"] for r in runs)
    record = {
        "benchmark": "snakemake -n (dry run) of a weight-quantization sweep from an empty working directory",
        "sweep": {
            "models": args.models,
            "algorithms": ["bin", "fixed"],
            "bits": config["weightquant"]["bits"],
            "variants_per_model": 3 + 2 * args.bits,
        },
        "command": cmd.replace(str(configfile), "sweep.yaml").replace(tmp, "<tmp>"),
        "jobs": jobs,
        "runs": runs,
        "seconds_median": round(median, 3),
        "ms_per_job": round(1000 * median / jobs, 2),
        "targets": TARGETS,
        "met": {
            "jobs_min": jobs >= TARGETS["jobs_min"],
            "seconds_max": median <= TARGETS["seconds_max"],
        },
        "machine": machine_description(),
        "versions": package_versions(("snakemake", "snakemake-executor-plugin-slurm")),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("jobs", "seconds_median", "ms_per_job", "met")}))
    return 0 if all(record["met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
