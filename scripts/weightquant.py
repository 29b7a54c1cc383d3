"""weightquant: bin or fixed-point quantization of a weights.pickle, with its errors."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.workflow.logs import run_logged


def main(inp, out, algorithm, bits, params):
    from quantflow.quant.weightonly.packed import packed_size_bytes
    from quantflow.quant.weightonly.apply import quantize_weights
    from quantflow.formats.weights import load_weights, save_weights

    data, errors = quantize_weights(
        load_weights(inp.weights),
        algorithm,
        bits,
        keep_batchnorm_float=params.keep_batchnorm_float,
        keep_bias_float=params.keep_bias_float,
    )
    save_weights(data, out.weights)
    errors["packed_size_bytes"] = packed_size_bytes(data)
    Path(out.errors).write_text(json.dumps(errors, indent=2) + "\n")
    formats = errors.get("fixed_point", {})
    for name, error in errors["relative_error_pct"].items():
        f = formats.get(name)
        detail = (
            f" (decimal shift {f['decimal_shift']}, {f['integer_bits']} integer, "
            f"{f['fractional_bits']} fractional bits, sign bit {f['sign_bit']})"
            if f
            else ""
        )
        print(f"  {name}: relative error {error:.4g}%{detail}")
    packed = f"packed {errors['packed_size_bytes']} bytes"
    if errors["relative_error_pct"]:
        summary = ", ".join(
            f"{s} {errors[f'relative_error_pct_{s}']:.4g}%" for s in ("min", "mean", "max")
        )
        print(f"{algorithm} {bits} bits: relative error {summary}; {packed}")
    else:
        print(f"{algorithm} {bits} bits: nothing quantized; {packed}")


run_logged(
    snakemake.log[0],
    main,
    snakemake.input,
    snakemake.output,
    snakemake.wildcards.algorithm,
    int(snakemake.wildcards.bits),
    snakemake.params,
)
