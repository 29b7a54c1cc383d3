"""tflite_aeq: an int4-weight TFLite model made by ai-edge-quantizer from the fp32 one."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.logs import run_logged
from quantflow.runtime import configure_threads


def main(inp, out, fmt):
    configure_threads(1, tensorflow=False)
    from quantflow import tflite

    print(f"ai-edge-quantizer recipe {tflite.AEQ_FORMATS[fmt]} on {inp.fp32}")
    tflite.save(tflite.quantize_with_aeq(inp.fp32, fmt), out.tflite)


run_logged(snakemake.log[0], main, snakemake.input, snakemake.output, snakemake.wildcards.aeq)
