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

    from quantflow.quant.micronet.count import count_model
    from quantflow.quant.micronet.score import reference_counts

    model = keras.saving.load_model(inp.model, compile=False)
    counts = count_model(model)
    totals = reference_counts(counts)
    Path(out.counts).write_text(
        json.dumps(
            {
                "model": model.name,
                **totals,
                "layers": [c.to_dict() for c in counts],
            },
            indent=2,
        )
        + "\n"
    )
    print(
        f"{model.name}: {int(totals['p_ref'])} parameters, {int(totals['f_ref'])} operations "
        f"(multiply-accumulates count two) in {len(counts)} counted operations"
    )


run_logged(snakemake.log[0], main, snakemake.input, snakemake.output)
