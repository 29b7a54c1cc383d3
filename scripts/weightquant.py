"""weightquant: bin or fixed-point quantization of a weights.pickle, with its errors."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.logs import run_logged


def main(inp, out, algorithm, bits, params):
    from quantflow.weightquant import packed_size_bytes, quantize_weights
    from quantflow.weights import load_weights, save_weights

    data, errors = quantize_weights(
        load_weights(inp.weights), algorithm, bits,
        keep_batchnorm_float=params.keep_batchnorm_float, keep_bias_float=params.keep_bias_float,
    )
    save_weights(data, out.weights)
    errors["packed_size_bytes"] = packed_size_bytes(data)
    Path(out.errors).write_text(json.dumps(errors, indent=2) + "\n")
    for name, error in errors["per_variable"].items():
        print(f"  {name}: relative error {error:.4g}")
    print(f"{algorithm} {bits} bits: relative error min {errors['min']:.4g}, mean "
          f"{errors['mean']:.4g}, max {errors['max']:.4g}; packed {errors['packed_size_bytes']} bytes")


run_logged(
    snakemake.log[0], main, snakemake.input, snakemake.output, snakemake.wildcards.algorithm,
    int(snakemake.wildcards.bits), snakemake.params,
)
