"""micronet_counts: the MicroNet operation and parameter counts of a float model, per layer
(the float model's own 32-bit totals are the score's default references)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.workflow.logs import run_logged
from quantflow.workflow.threads import configure_threads


def main(inp, out, custom):
    configure_threads(1)
    from quantflow.models.custom import load_keras, use_custom_code

    use_custom_code(custom)
    from quantflow.quant.micronet.score import counts_record

    model = load_keras(inp.model, custom["model"])
    record = counts_record(model)
    Path(out.counts).write_text(json.dumps(record, indent=2) + "\n")
    if record["layers"] is None:
        print(
            f"WARNING: {record['unsupported']}; this model's variants get no MicroNet score "
            "(n/a in the report); everything else is compared",
            file=sys.stderr,
        )
        return
    for name in record["float_layers"]:
        print(
            f"WARNING: layer {name!r} has no int8 form: counted as float (its weights at 32 "
            "bits, one 32-bit operation per output value: an estimate)",
            file=sys.stderr,
        )
    print(
        f"{model.name}: {int(record['p_ref'])} parameters, {int(record['f_ref'])} operations "
        f"(multiply-accumulates count two) in {len(record['layers'])} counted operations"
    )


run_logged(snakemake.log[0], main, snakemake.input, snakemake.output, snakemake.params.custom)
