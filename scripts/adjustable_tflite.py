"""adjustable_tflite: the deployable int8 TFLite model of an adjustable target (each
weight channel on its own b-bit grid, stored as int8; 8-bit activations per tensor),
checked against the simulation of that same configuration on held-out images."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.logs import run_logged
from quantflow.runtime import configure_threads


def main(inp, out, target, params, threads):
    configure_threads(threads, params.seed)
    import keras
    import numpy as np

    from quantflow import adjustable as adj
    from quantflow import data, micronet, tflite
    import quantflow.fakequant  # noqa: F401 (registers the fake-quant layers)

    float_model = keras.saving.load_model(inp.float_model, compile=False)
    model = keras.saving.load_model(inp.model, compile=False)
    simulation = adj.int8_model(float_model, model)
    size = data.read_info(inp.info)["input_shape"][:2]
    train, val = data.Split(inp.train, size), data.Split(inp.val, size)
    calibration = train.take(tflite.calibration_indices(len(train), 32, params.seed))
    rng = np.random.default_rng(params.seed)
    images = val.take(np.sort(rng.permutation(len(val))[: params.check_images]))
    check = tflite.convert_checked(simulation, out.tflite, calibration, images, threads)

    # its score: every weight channel at its trained bits, every activation at 8 bits
    info = json.loads(Path(inp.quant_info).read_text())
    counts = json.loads(Path(inp.model_info).read_text())["layers"]
    weights = {k: v["bits"] for k, v in info["weights"].items()}
    score = micronet.score(counts, weights, 8, bias_bits=info["bias_bits"],
                           p_ref=info["p_ref"], f_ref=info["f_ref"])
    score = {k: score[k] for k in ("score", "parameter_score", "operation_score",
                                   "parameter_storage", "operations", "p_ref", "f_ref",
                                   "mean_weight_bits", "mean_activation_bits")}
    Path(out.score).write_text(json.dumps(score, indent=2) + "\n")
    check = {"target": target, "weight_bits": "per channel", "activation_bits": 8, **check,
             "score": score}
    Path(out.check).write_text(json.dumps(check, indent=2) + "\n")
    print(f"{tflite.describe_check(check)}; score {score['score']:.4f} (weights at their "
          f"bits, activations at 8)")
    if check["activation_grid_mismatches"]:
        raise tflite.grid_mismatch_error(out.tflite, out.check,
                                         check["activation_grid_mismatches"], "exported")


run_logged(
    snakemake.log[0], main, snakemake.input, snakemake.output, snakemake.wildcards.target,
    snakemake.params, snakemake.threads,
)
