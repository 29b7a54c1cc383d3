"""Benchmark: the default pipeline from an empty results/ directory, on this machine.

Runs the real `snakemake` command on the repository's config.yaml in a fresh working
directory (data included: the download rule copies Fashion-MNIST from its mirror), times
it, reads every rule's `benchmark:` file and the summary, and records the figures against
the targets in benchmarks/results/pipeline.json (and prints them).

    .venv/bin/python benchmarks/pipeline.py [--cores 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quantflow.workflow.environment import machine_description  # noqa: E402
from quantflow.workflow.environment import package_versions  # noqa: E402

TARGETS = {
    "wall_seconds_max": 300,
    "float_test_accuracy_min": 0.90,
    "int8_vs_fp32_pp_max_drop": 0.5,
    "int8_size_ratio_max": 0.3,
    "int8_speed_ratio_batched_min": 1.0,
}


def rule_benchmarks(results: Path) -> list[dict]:
    rows = []
    for tsv in sorted((results / "benchmarks").glob("**/*.tsv")):
        with tsv.open() as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        rows.append(
            {
                "job": str(tsv.relative_to(results / "benchmarks").with_suffix("")),
                "seconds": float(row["s"]),
                "max_rss_mb": float(row["max_rss"]) if row["max_rss"] not in ("", "-") else None,
            }
        )
    return rows


def _round(value, digits):
    return None if value is None else round(value, digits)


def job_timeline(work: Path) -> list[dict]:
    """Every job of the run from Snakemake's own log (.snakemake/log/): rule, wildcards,
    threads, start and end in seconds from the first job (the log's 1 s resolution), so
    that the time a job waited for cores shows as well as the time it ran."""
    import datetime
    import re

    log = max((work / ".snakemake/log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    jobs, stamp, current = {}, None, None
    for line in log.read_text().splitlines():
        if m := re.match(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]", line):
            stamp, current = datetime.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y"), None
        elif m := re.match(r"(?:local)?rule (\w+):", line):
            current = {"rule": m.group(1), "wildcards": "", "threads": 1, "start": stamp}
        elif current is not None and (m := re.match(r"\s+jobid: (\d+)", line)):
            jobs[int(m.group(1))] = current
        elif current is not None and (m := re.match(r"\s+wildcards: (.*)", line)):
            current["wildcards"] = m.group(1)
        elif current is not None and (m := re.match(r"\s+threads: (\d+)", line)):
            current["threads"] = int(m.group(1))
        elif m := re.match(r"Finished jobid: (\d+)", line):
            jobs[int(m.group(1))]["end"] = stamp
    done = [j for j in jobs.values() if "end" in j and j["rule"] != "all"]
    t0 = min(j["start"] for j in done)
    return sorted(
        (
            {
                "rule": j["rule"],
                "wildcards": j["wildcards"],
                "threads": j["threads"],
                "start_s": (j["start"] - t0).total_seconds(),
                "end_s": (j["end"] - t0).total_seconds(),
            }
            for j in done
        ),
        key=lambda j: (j["start_s"], j["rule"]),
    )


def rule_breakdown(timeline: list[dict]) -> dict:
    """Per rule: jobs, the sum of their wall times and of wall x threads (core-seconds),
    largest first."""
    out = {}
    for j in timeline:
        row = out.setdefault(j["rule"], {"jobs": 0, "wall_seconds": 0.0, "core_seconds": 0.0})
        row["jobs"] += 1
        row["wall_seconds"] += j["end_s"] - j["start_s"]
        row["core_seconds"] += (j["end_s"] - j["start_s"]) * j["threads"]
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["core_seconds"]))


def write_result(path, benchmark: str, figures: dict, met: dict, **fields) -> dict:
    """Record a benchmark's figures with the machine and package versions in `path`
    (JSON), and print the figures and targets met."""
    result = {
        "benchmark": benchmark,
        **{k: v for k, v in fields.items() if k == "command"},
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "versions": package_versions(),
        **{k: v for k, v in fields.items() if k != "command"},
        "figures": figures,
        "targets_met": met,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"figures": figures, "targets_met": met}, indent=2))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", default="2")
    parser.add_argument("--keep", help="run in this directory and keep it")
    parser.add_argument(
        "--backbone",
        action="store_true",
        help="leave out the weight-only grid (weightquant: algorithms: []): "
        "download, train, fp32/int8 TFLite and their evaluation only",
    )
    parser.add_argument("--out", help="default: benchmarks/results/pipeline[_backbone].json")
    args = parser.parse_args()
    suffix = "_backbone" if args.backbone else ""
    args.out = args.out or str(REPO / f"benchmarks/results/pipeline{suffix}.json")

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="quantflow-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "results", ignore_errors=True)
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [
        str(snakemake),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(REPO / "config.yaml"),
        "--cores",
        args.cores,
    ]
    if args.backbone:
        override = work / "backbone.yaml"
        override.write_text("weightquant:\n  algorithms: []\nfat:\n  schemes: []\n")
        cmd[cmd.index("--configfile") + 1 : cmd.index("--configfile") + 2] = [
            str(REPO / "config.yaml"),
            str(override),
        ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        return proc.returncode

    timeline = job_timeline(work)
    records = {r["variant"]: r for r in json.loads((work / "results/summary.json").read_text())}
    int8, fp32, flt = records["tflite-int8"], records["tflite-fp32"], records["keras-float"]
    figures = {
        "wall_seconds": round(wall, 1),
        "float_test_accuracy": flt["accuracy"],
        "fp32_test_accuracy": fp32["accuracy"],
        "int8_test_accuracy": int8["accuracy"],
        "int8_vs_fp32_pp": round(int8["delta_accuracy_pp"], 3),
        "int8_size_ratio": round(int8["size_ratio"], 4),
        "int8_speed_ratio_batched": round(int8["speed_ratio_batched"], 3),
        "int8_speed_ratio_b1": round(int8["speed_ratio_b1"], 3),
        # the simulations are not timed (None)
        "ms_per_image_batched": {
            v: _round(r["ms_per_image_batched"], 4) for v, r in records.items()
        },
        "ms_per_image_b1": {v: _round(r["ms_per_image_b1"], 4) for v, r in records.items()},
        "size_bytes": {v: r["size_bytes"] for v, r in records.items()},
        "accuracy": {v: r["accuracy"] for v, r in records.items()},
        "top5": {v: r["top5"] for v, r in records.items()},
        "tie_rate": {v: r["tie_rate"] for v, r in records.items()},
        "top5_tie_rate": {v: r["top5_tie_rate"] for v, r in records.items()},
        "speed_ratio_b1": {v: _round(r["speed_ratio_b1"], 3) for v, r in records.items()},
        "speed_ratio_batched": {v: _round(r["speed_ratio_batched"], 3) for v, r in records.items()},
        "latency_cores_held": records["tflite-fp32"].get("latency_cores_held"),
    }
    met = {
        "wall_seconds_max": wall <= TARGETS["wall_seconds_max"],
        "float_test_accuracy_min": flt["accuracy"] >= TARGETS["float_test_accuracy_min"],
        "int8_vs_fp32_pp_max_drop": -int8["delta_accuracy_pp"]
        <= TARGETS["int8_vs_fp32_pp_max_drop"],
        "int8_size_ratio_max": int8["size_ratio"] <= TARGETS["int8_size_ratio_max"],
        "int8_speed_ratio_batched_min": int8["speed_ratio_batched"]
        >= TARGETS["int8_speed_ratio_batched_min"],
    }
    write_result(
        args.out,
        "default pipeline from empty results/ (data copied from its mirror)"
        + (", without the weight-only grid" if args.backbone else ""),
        figures,
        met,
        command=" ".join(cmd[:1] + cmd[cmd.index("--configfile") :]),
        targets=TARGETS,
        rules=rule_benchmarks(work / "results"),
        breakdown=rule_breakdown(timeline),
        timeline=timeline,
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
