"""download: fetch the dataset's files from the configured mirrors (checksummed, atomic)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.data import DATASET_FILES, DATASET_HINTS
from quantflow.download import fetch_from_mirrors
from quantflow.logs import run_logged


def main(dataset, mirrors, manifest, retries, timeout):
    files = {}
    for name, checksum in DATASET_FILES[dataset].items():
        path = fetch_from_mirrors(
            f"{name}.gz", mirrors, Path(manifest).parent, checksum, gunzip=True,
            retries=retries, timeout=timeout, hint=DATASET_HINTS[dataset],
        )
        files[path.name] = checksum
    Path(manifest).write_text(json.dumps({"dataset": dataset, "files": files}, indent=2) + "\n")


run_logged(
    snakemake.log[0], main, snakemake.wildcards.dataset, snakemake.params.mirrors,
    snakemake.output.manifest, snakemake.params.retries, snakemake.params.timeout,
)
