"""fat: FAT threshold training of one quantization scheme of a float model (a fake-quant
model whose thresholds are trained to match the float logits on unlabelled images):
quantflow.quant.fat.job."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.workflow.logs import run_logged
from quantflow.workflow.files import as_dataclass
from quantflow.workflow.threads import configure_threads


def main(inp, out, scheme, cfg, seed, threads, custom):
    configure_threads(threads, seed)
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
    )


run_logged(
    snakemake.log[0],
    main,
    snakemake.input,
    snakemake.output,
    snakemake.wildcards.scheme,
    snakemake.params.fat,
    snakemake.params.seed,
    snakemake.threads,
    snakemake.params.custom,
)
