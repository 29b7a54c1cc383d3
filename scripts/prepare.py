"""prepare: seeded train / validation / test splits of the downloaded dataset."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow import data
from quantflow.logs import run_logged


def main(dataset, raw_dir, out, params):
    loaded = data.LOADERS[dataset](raw_dir)
    splits = data.make_splits(
        loaded["train"], loaded["test"], params.validation_size, params.seed,
        params.max_train, params.max_test,
    )
    for split in data.SPLITS:
        data.save_split(out[split], *splits[split])
        print(f"{split}: {len(splits[split][1])} images, shape {splits[split][0].shape[1:]}")
    data.write_info(out.info, dataset, data.CLASS_NAMES[dataset], splits)


run_logged(
    snakemake.log[0], main, snakemake.wildcards.dataset,
    Path(snakemake.input.manifest).parent, snakemake.output, snakemake.params,
)
