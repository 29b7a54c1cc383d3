"""tflite_aeq: an int4-weight TFLite model made by ai-edge-quantizer from the fp32 one."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.workflow.logs import run_logged
from quantflow.workflow.threads import configure_threads


def main(inp, out, fmt):
    configure_threads(1, tensorflow=False)
    from quantflow.deploy.formats import AEQ_FORMATS
    from quantflow.deploy.aeq import quantize_with_aeq
    from quantflow.deploy.convert import save

    print(f"ai-edge-quantizer recipe {AEQ_FORMATS[fmt]} on {inp.fp32}")
    save(quantize_with_aeq(inp.fp32, fmt), out.tflite)


run_logged(snakemake.log[0], main, snakemake.input, snakemake.output, snakemake.wildcards.aeq)
