"""prepare: seeded train / validation / test splits of the dataset."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.data.splits import SPLITS
from quantflow.data.prepare import load_dataset, make_splits, save_split, write_info
from quantflow.workflow.logs import run_logged


def main(dataset, raw_dir, out, params):
    cfg = params.dataset
    loaded = load_dataset(
        dataset,
        raw_dir,
        root=cfg.get("root"),
        train_list=cfg.get("train_list"),
        test_list=cfg.get("test_list"),
        val_list=cfg.get("val_list"),
        class_names=cfg.get("class_names"),
    )
    splits = make_splits(
        loaded["train"],
        loaded["test"],
        cfg["validation_size"],
        params.seed,
        cfg.get("max_train"),
        cfg.get("max_test"),
        val=loaded["val"],
    )
    for split in SPLITS:
        save_split(out[split], *splits[split])
        print(f"{split}: {len(splits[split][1])} items, {splits[split][0].shape[1:] or 'files'}")
    write_info(out.info, dataset, loaded["class_names"], splits, cfg.get("image_size"))


run_logged(
    snakemake.log[0],
    main,
    snakemake.wildcards.dataset,
    Path(snakemake.input.manifest).parent,
    snakemake.output,
    snakemake.params,
)
