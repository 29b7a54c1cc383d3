"""extract_weights: the trained model's arrays and architecture as weights.pickle."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.workflow.logs import run_logged
from quantflow.workflow.threads import configure_threads


def main(model_path, out_path, threads, custom):
    configure_threads(threads)
    from quantflow.models.custom import load_keras, use_custom_code

    use_custom_code(custom)
    from quantflow.formats.weights import extract_weights, save_weights

    data = extract_weights(load_keras(model_path, custom["model"]))
    save_weights(data, out_path)
    count = sum(a.size for roles in data["layers"].values() for a in roles.values())
    print(f"{len(data['layers'])} layers, {count} values -> {out_path}")


run_logged(
    snakemake.log[0],
    main,
    snakemake.input.model,
    snakemake.output.weights,
    snakemake.threads,
    snakemake.params.custom,
)
