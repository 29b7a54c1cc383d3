"""adjustable_tflite: the deployable TFLite model of an adjustable target (each weight
channel on its own b-bit grid, a layer stored as INT4 where every channel is <= 4 bits and
as int8 otherwise; 8-bit activations per tensor),
checked against the simulation of that same configuration on held-out images."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.workflow.logs import run_logged
from quantflow.workflow.threads import configure_threads


def main(inp, out, target, params, threads):
    configure_threads(threads, params.seed)
    from quantflow.models.custom import load_keras, use_custom_code

    use_custom_code(params.custom)
    from quantflow.quant.adjustable import export as adj
    from quantflow.quant.adjustable.storage import stored_bits
    from quantflow.data import splits as data
    from quantflow.quant.micronet import score as micronet
    from quantflow.deploy import check as tflite
    import quantflow.quant.layers  # noqa: F401 (registers the fake-quant layers)

    float_model = load_keras(inp.float_model, params.custom["model"])
    model = load_keras(inp.model, params.custom["model"])
    simulation = adj.int8_model(float_model, model)
    size = data.read_info(inp.info)["input_shape"][:2]
    train, val = data.Split(inp.train, size), data.Split(inp.val, size)
    # the int8 model must predict what the fake-quant model does
    check = tflite.convert_checked(
        simulation,
        out.tflite,
        train,
        val,
        seed=params.seed,
        check_images=params.check_images,
        threads=threads,
    )

    # its score: every kernel at its storage class's bits (INT4: 4, int8: 8), every
    # activation at 8 bits: what the file holds and runs
    info = json.loads(Path(inp.quant_info).read_text())
    counts = json.loads(Path(inp.model_info).read_text())["layers"]
    weights = {k: stored_bits(v["bits"]) for k, v in info["weights"].items()}
    score = micronet.score(
        counts, weights, 8, bias_bits=info["bias_bits"], p_ref=info["p_ref"], f_ref=info["f_ref"]
    )
    score = {k: score[k] for k in micronet.SUMMARY_KEYS}
    Path(out.score).write_text(json.dumps(score, indent=2) + "\n")
    check = {
        "target": target,
        "weight_bits": "per layer: INT4 where every channel is <= 4 bits, else int8",
        "int4_layers": sorted(
            k for k, v in info["weights"].items() if stored_bits(v["bits"])[0] == 4
        ),
        "activation_bits": 8,
        **check,
        "score": score,
    }
    Path(out.check).write_text(json.dumps(check, indent=2) + "\n")
    print(
        f"{tflite.describe_check(check)}; score {score['score']:.4f} (kernels at their "
        f"stored bits, activations at 8)"
    )
    if check["activation_grid_mismatches"]:
        raise tflite.grid_mismatch_error(
            out.tflite, out.check, check["activation_grid_mismatches"], "exported"
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
