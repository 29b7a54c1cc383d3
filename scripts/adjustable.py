"""adjustable: adjustable mixed-precision quantization of a float model for one named
target (per-channel trainable ranges and bit widths under a MicroNet-score penalty):
quantflow.quant.adjustable.job."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.workflow.workers import run_logged_workers
from quantflow.workflow.files import as_dataclass
from quantflow.workflow.threads import configure_threads


def main(inp, out, target, params, threads, distribute):
    configure_threads(threads, params.seed)
    from quantflow.distribute import strategy as dist

    dist.configure_devices(distribute)
    strategy = dist.make_strategy(distribute)
    print(f"training on {dist.describe(strategy)}")
    from quantflow.models.custom import use_custom_code

    use_custom_code(params.custom)
    from quantflow.quant.adjustable.job import AdjustableFiles, AdjustableOutputs, run

    run(
        as_dataclass(AdjustableFiles, inp),  # fat_thresholds: when the target starts from FAT
        as_dataclass(AdjustableOutputs, out),
        target,
        params.settings,
        params.seed,
        threads,
        params.custom["model"],
        strategy,
    )


run_logged_workers(
    snakemake.log[0],
    dict(snakemake.resources.items()),  # mpi and tasks: one worker per SLURM task
    snakemake.threads,
    main,
    snakemake.input,
    snakemake.output,
    snakemake.wildcards.target,
    snakemake.params,
    snakemake.threads,
    snakemake.config.get("distribute"),  # how it runs, not what it computes: not a param
)
