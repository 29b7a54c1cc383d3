"""adjustable: adjustable mixed-precision quantization of a float model for one named
target (per-channel trainable ranges and bit widths under a MicroNet-score penalty):
quantflow.quant.adjustable.job."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.workflow.logs import run_logged
from quantflow.workflow.threads import configure_threads


def main(inp, out, target, params, threads):
    configure_threads(threads, params.seed)
    from quantflow.quant.adjustable.job import AdjustableFiles, AdjustableOutputs, run

    fat = inp.fat_thresholds if "fat_thresholds" in inp.keys() else None
    run(
        AdjustableFiles(inp.model, inp.train, inp.val, inp.info, fat),
        AdjustableOutputs(**{k: getattr(out, k) for k in AdjustableOutputs.__dataclass_fields__}),
        target,
        params.settings,
        params.seed,
        threads,
    )


run_logged(
    snakemake.log[0],
    main,
    snakemake.input,
    snakemake.output,
    snakemake.wildcards.target,
    snakemake.params,
    snakemake.threads,
)
