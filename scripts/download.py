"""download: fetch the dataset's files from the configured mirrors (checksummed, atomic)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.data.sources import fetch_dataset
from quantflow.workflow.logs import run_logged


def main(dataset, manifest, params, cfg):
    # where from and how patiently: config, not params (a new mirror reruns nothing)
    result = fetch_dataset(
        dataset,
        Path(manifest).parent,
        mirrors=cfg.get("mirrors"),
        checksums=params.checksums,
        retries=cfg["retries"],
        timeout=cfg["timeout_s"],
    )
    Path(manifest).write_text(json.dumps(result, indent=2) + "\n")


run_logged(
    snakemake.log[0],
    main,
    snakemake.wildcards.dataset,
    snakemake.output.manifest,
    snakemake.params,
    snakemake.config["dataset"],
)
