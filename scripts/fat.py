"""fat: FAT threshold training of one quantization scheme of a float model (a fake-quant
model whose thresholds are trained to match the float logits on unlabelled images):
quantflow.quant.fat.job."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.workflow.workers import run_logged_workers
from quantflow.workflow.files import as_dataclass
from quantflow.workflow.threads import configure_threads


def main(inp, out, scheme, cfg, seed, threads, custom, distribute):
    configure_threads(threads, seed)
    from quantflow.distribute import strategy as dist

    dist.configure_devices(distribute)
    strategy = dist.make_strategy(distribute)
    print(f"training on {dist.describe(strategy)}")
    from quantflow.models.custom import use_custom_code

    use_custom_code(custom)
    from quantflow.quant.fat.job import FatFiles, FatOutputs, run

    run(
        as_dataclass(FatFiles, inp),
        as_dataclass(FatOutputs, out),
        scheme,
        cfg,
        seed,
        threads,
        custom["model"],
        strategy,
    )


run_logged_workers(
    snakemake.log[0],
    dict(snakemake.resources.items()),  # mpi and tasks: one worker per SLURM task
    snakemake.threads,
    main,
    snakemake.input,
    snakemake.output,
    snakemake.wildcards.scheme,
    snakemake.params.fat,
    snakemake.params.seed,
    snakemake.threads,
    snakemake.params.custom,
    snakemake.config.get("distribute"),  # how it runs, not what it computes: not a param
)
