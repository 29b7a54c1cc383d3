"""Weight-only quantization of a checkpoint: every chosen tensor is quantized and at once
dequantized, so it keeps its float dtype and the model runs unchanged, only less precise.

Two algorithms, both over whole tensors with numpy (in cache-sized blocks, no Python loop
over values):

* ``bin``: 2**bits equal bins between the tensor's min and max, each value replaced by the
  centre of its bin (quantflow.quant.weightonly.bin).
* ``fixed``: the "Neural Networks Quantization" reference's fixed point: a decimal shift
  for tensors below 1 in magnitude, sign and magnitude, integer bits for the largest
  magnitude and the rest fractional (quantflow.quant.weightonly.fixed).

Which tensors are quantized is decided here (`quantize_weights`); each algorithm is a module
of this package with `quantize(array, bits, *, name, threads) -> (values, format or None)`,
imported by name, so a job runs (and its code digest covers) only its own algorithm.
"""

from __future__ import annotations

import copy
import importlib

import numpy as np

from quantflow.errors import QuantflowError
from quantflow.quant.weightonly.blocks import _check


def relative_error(x, q) -> float:
    """||x - q||_2 / ||x||_2 in float64, as a fraction (0.0 when both are all zero, inf
    when only x is)."""
    x64 = np.asarray(x, dtype=np.float64)
    diff = float(np.linalg.norm((x64 - np.asarray(q, dtype=np.float64)).ravel()))
    norm = float(np.linalg.norm(x64.ravel()))
    if norm == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / norm


def relative_error_pct(x, q) -> float:
    """The relative error in percent, as the reference reports it:
    100 * ||x - q||_2 / ||x||_2."""
    return 100.0 * relative_error(x, q)


ALGORITHMS = ("bin", "fixed")  # modules of this package


def algorithm_module(algorithm: str):
    """The module of a weight-only algorithm (its `quantize` function)."""
    return importlib.import_module(f"quantflow.quant.weightonly.{algorithm}")


def quantize_weights(
    data: dict,
    algorithm: str,
    bits: int,
    *,
    keep_batchnorm_float: bool = False,
    keep_bias_float: bool = False,
    threads: int | None = None,
) -> tuple[dict, dict]:
    """Quantize (and dequantize) every trainable variable of a weights dict from
    :func:`quantflow.formats.weights.extract_weights`: kernels, biases, BatchNorm gamma and beta.
    Non-trainable variables (BatchNorm moving mean and variance) stay float; so do
    BatchNormalization layers' parameters with `keep_batchnorm_float` and every ``bias``
    with `keep_bias_float`.

    Returns (new weights dict, errors). The input is left untouched; the new metadata gets
    ``quantization``. errors (what errors.json holds): ``algorithm``, ``bits``,
    ``relative_error_pct`` {"layer/role": 100 * ||x - q||_2 / ||x||_2} of the quantized
    variables, their ``relative_error_pct_min``, ``_max`` and unweighted ``_mean`` (None if
    nothing was quantized), for ``fixed`` ``fixed_point`` {"layer/role":
    {decimal_shift, integer_bits, fractional_bits, sign_bit}}, for ``bin``
    ``affine_exact`` {"layer/role": whether an integer grid with a scale and zero point
    holds its bin centres exactly}. `threads` goes to the
    algorithm.
    """
    from quantflow.formats.weights import check_weights

    check_weights(data)
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise QuantflowError(
            f"unknown weight quantization algorithm {algorithm!r}; choose one "
            f"of: {', '.join(sorted(ALGORITHMS))}"
        )
    _check(np.zeros(1, np.float32), bits, None, threads)
    quantize = algorithm_module(algorithm).quantize
    metadata = data["metadata"]
    trainable = metadata.get("trainable", {})
    classes = metadata.get("layer_classes", {})
    layers, per_variable, formats, exact = {}, {}, {}, {}
    for layer, roles in data["layers"].items():
        keep_layer = keep_batchnorm_float and classes.get(layer) == "BatchNormalization"
        layers[layer] = {}
        for role, array in roles.items():
            key = f"{layer}/{role}"
            if key not in trainable:
                raise QuantflowError(
                    f"weights metadata does not say whether {key} is "
                    "trainable; re-create them with extract_weights"
                )
            keep = (
                not trainable[key]
                or keep_layer
                or (keep_bias_float and role.rsplit("/", 1)[-1] == "bias")
            )
            if keep:
                layers[layer][role] = array.copy()
                continue
            q, fmt = quantize(array, bits, name=key, threads=threads)
            if algorithm == "bin":
                exact[key] = algorithm_module("bin").affine_exact(array, bits)
            if fmt is not None:
                formats[key] = fmt
            layers[layer][role] = q
            per_variable[key] = relative_error_pct(array, q)
    new_metadata = copy.deepcopy(metadata)
    new_metadata["quantization"] = {
        "algorithm": algorithm,
        "bits": int(bits),
        "keep_batchnorm_float": bool(keep_batchnorm_float),
        "keep_bias_float": bool(keep_bias_float),
        "quantized": sorted(per_variable),
    }
    values = list(per_variable.values())
    errors = {
        "algorithm": algorithm,
        "bits": int(bits),
        "relative_error_pct": per_variable,
        "relative_error_pct_min": min(values) if values else None,
        "relative_error_pct_max": max(values) if values else None,
        "relative_error_pct_mean": float(np.mean(values)) if values else None,
    }
    if algorithm == "fixed":
        errors["fixed_point"] = formats
    if algorithm == "bin":  # which quantized tensors a scale and zero point hold exactly
        errors["affine_exact"] = exact
    return {**data, "metadata": new_metadata, "layers": layers}, errors
