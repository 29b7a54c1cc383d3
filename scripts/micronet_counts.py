"""micronet_counts: the MicroNet operation and parameter counts of a float model, per layer
(the float model's own 32-bit totals are the score's default references)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.workflow.logs import run_logged
from quantflow.workflow.threads import configure_threads


def main(inp, out):
    configure_threads(1)
    import keras

    from quantflow.quant.micronet.score import counts_record

    model = keras.saving.load_model(inp.model, compile=False)
    record = counts_record(model)
    Path(out.counts).write_text(json.dumps(record, indent=2) + "\n")
    if record["layers"] is None:
        print(
            f"WARNING: {record['unsupported']}; this model's variants get no MicroNet score "
            "(n/a in the report); everything else is compared",
            file=sys.stderr,
        )
        return
    print(
        f"{model.name}: {int(record['p_ref'])} parameters, {int(record['f_ref'])} operations "
        f"(multiply-accumulates count two) in {len(record['layers'])} counted operations"
    )


run_logged(snakemake.log[0], main, snakemake.input, snakemake.output)
