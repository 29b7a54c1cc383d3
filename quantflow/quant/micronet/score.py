"""The MicroNet score of counted layers at given bit widths: parameter storage / P_ref plus
math operations / F_ref (see quantflow.quant.micronet)."""

from __future__ import annotations

import math

import numpy as np

from quantflow.errors import QuantflowError
from quantflow.quant.micronet.count import FULL_BITS, KINDS, MAC_KINDS, LayerCount

# Biases (BatchNorm folded) at a fixed precision, as the Texas-EIC entry evaluates them
# (--bias_bits 8): then a uniform 8-bit model scores exactly 0.5. The default of score()
# is 32 (what TFLite stores), so an all-32 call scores the float model's 2.0.
BIAS_BITS = 8


MICRONET_IMAGENET = {"p_ref": 6.9e6, "f_ref": 1170e6}


# named references for configs: "model" = the float model's own 32-bit counts
REFERENCES = {"model": {"p_ref": None, "f_ref": None}, "micronet_imagenet": MICRONET_IMAGENET}


# the fields of `score` a score.json / a variant's metrics keep (not the per-layer rows)
SUMMARY_KEYS = (
    "score",
    "parameter_score",
    "operation_score",
    "parameter_storage",
    "operations",
    "p_ref",
    "f_ref",
    "mean_weight_bits",
    "mean_activation_bits",
)


def _as_counts(counts) -> list[LayerCount]:
    out = []
    for c in counts:
        if isinstance(c, LayerCount):
            out.append(c)
        elif isinstance(c, dict):
            out.append(LayerCount.from_dict(c))
        else:
            raise QuantflowError(f"not a MicroNet layer count: {type(c).__name__}")
    if not out:
        raise QuantflowError("no layer counts to score (count_model found no operations)")
    return out


def _bits(value, what: str, size: int) -> np.ndarray:
    """`value` (a number or a per-channel sequence of `size`) as a float array of `size`."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
        raise QuantflowError(f"{what}: bits must be numbers from 1 to 32, got {value!r}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise QuantflowError(f"{what}: bits must be numbers from 1 to 32, got {value!r}") from None
    if arr.ndim > 1:
        raise QuantflowError(f"{what}: bits must be one number or a flat per-channel array")
    if arr.ndim == 1 and arr.size != size:
        raise QuantflowError(
            f"{what}: {arr.size} per-channel bit widths for {size} channels; give one "
            f"number or exactly {size}"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < 1) or np.any(arr > FULL_BITS):
        raise QuantflowError(f"{what}: bits must be numbers from 1 to 32, got {value!r}")
    return np.broadcast_to(arr, (size,)).astype(np.float64)


def _check_keys(bits, what: str, required: set, allowed: set, noun: str) -> None:
    """A dict of bits must name every one of `required` and nothing outside `allowed`."""
    if not isinstance(bits, dict):
        return
    unknown = sorted(set(bits) - allowed)
    if unknown:
        known = sorted(allowed)
        raise QuantflowError(
            f"{what}: no {noun} named {', '.join(map(repr, unknown[:5]))}; known: "
            f"{', '.join(known[:20])}{' ...' if len(known) > 20 else ''}"
        )
    missing = sorted(required - set(bits))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise QuantflowError(
            f"{what}: no bits for {noun} {', '.join(map(repr, missing[:5]))}{more}; give "
            "every one, or one number for all"
        )


def _lookup(bits, name: str, what: str, size: int) -> np.ndarray:
    if isinstance(bits, dict):
        return _bits(bits[name], f"{what}[{name!r}]", size)
    return _bits(bits, what, size)


def _view(bits: np.ndarray, view_channels: int, what: str) -> np.ndarray:
    """Bits of a C-channel tensor as seen by an operation with `view_channels` channels:
    view channel l reads channel l % C (Flatten / Reshape, channels last)."""
    c = bits.size
    if view_channels == c:
        return bits
    if view_channels % c == 0:
        return np.tile(bits, view_channels // c)
    if np.all(bits == bits[0]):
        return np.full(view_channels, bits[0])
    raise QuantflowError(
        f"{what}: per-channel bits of a {c}-channel tensor cannot be mapped onto the "
        f"{view_channels} channels of a reshaped view; give it one number"
    )


def _pair_sum(w: np.ndarray, a: np.ndarray, groups: int) -> float:
    """sum over weight channels o and the view channels l of o's group of max(w_o, a_l)."""
    if groups == 1:  # all pairs: by distinct values (a flattened dense input is long)
        wv, wc = np.unique(w, return_counts=True)
        av, ac = np.unique(a, return_counts=True)
        return float(np.sum(np.maximum.outer(wv, av) * np.outer(wc, ac)))
    wg = w.reshape(groups, w.size // groups)
    ag = a.reshape(groups, a.size // groups)
    return float(np.sum(np.maximum(wg[:, :, None], ag[:, None, :])))


def reference_counts(counts) -> dict:
    """The float model's own totals: parameters and operations at 32 bits."""
    counts = _as_counts(counts)
    return {
        "p_ref": float(sum(c.parameters for c in counts)),
        "f_ref": float(sum(c.operations for c in counts)),
    }


def weight_layers(counts) -> dict[str, int]:
    """Record name -> weight channels (entries of its per-channel weight bits), for the
    records that have weights: the keys `weight_bits` needs."""
    return {c.name: c.weight_channels for c in _as_counts(counts) if c.weights}


def activation_tensors(counts) -> dict[str, int]:
    """Tensor name -> channels, for the tensors counted operations read: the keys
    `activation_bits` needs."""
    out: dict[str, int] = {}
    for c in _as_counts(counts):
        for t in c.inputs:
            out.setdefault(t["tensor"], int(t["channels"]))
    return out


def _positive(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise QuantflowError(f"{what} must be a positive number, got {value!r}")
    if not math.isfinite(float(value)) or float(value) <= 0:
        raise QuantflowError(f"{what} must be a positive number, got {value!r}")
    return float(value)


def score(counts, weight_bits, activation_bits, *, bias_bits=FULL_BITS, p_ref=None, f_ref=None):
    """The MicroNet score of `counts` (from `count_model`, or their `to_dict()`s) at the
    given bit widths (see the module doc for the convention):

    weight_bits: one number, or {record name: number or per-weight-channel array} for
    every record with weights (`weight_layers`). activation_bits: one number, or {tensor
    name: number or per-channel array} for every tensor read (`activation_tensors`).
    bias_bits: one number (default 32, as TFLite stores biases; the Texas-EIC entry
    evaluates at BIAS_BITS = 8, with which a uniform 8-bit model scores exactly 0.5) or
    {record name: number}.
    p_ref, f_ref: the references; None = the float model's own 32-bit counts
    (`reference_counts`), or e.g. `**MICRONET_IMAGENET`.

    Returns a JSON-ready dict: score = parameter_score + operation_score, with
    parameter_storage / p_ref and operations / f_ref, the plain counts, mean bits and a
    per-layer breakdown."""
    counts = _as_counts(counts)
    totals = reference_counts(counts)
    refs = {}
    for what, given in (("p_ref", p_ref), ("f_ref", f_ref)):
        if given is not None:
            refs[what] = _positive(given, what)
        elif totals[what] > 0:
            refs[what] = totals[what]
        else:
            noun = "parameters" if what == "p_ref" else "operations"
            raise QuantflowError(f"the model has no {noun} to be its own reference; give {what}")
    for c in counts:
        if c.kind not in KINDS:
            raise QuantflowError(f"layer count {c.name!r}: unknown kind {c.kind!r}")
    weighted = {c.name for c in counts if c.weights}
    biased = {c.name for c in counts if c.bias}
    tensors = activation_tensors(counts)
    _check_keys(weight_bits, "weight_bits", weighted, weighted, "layer with weights")
    _check_keys(bias_bits, "bias_bits", biased, biased, "layer with a bias")
    _check_keys(
        activation_bits,
        "activation_bits",
        set(tensors),
        set(tensors) | {c.output for c in counts},
        "tensor",
    )
    act = {
        name: _lookup(activation_bits, name, "activation_bits", channels)
        for name, channels in tensors.items()
    }

    layers, storage, operations = [], 0.0, 0.0
    weight_sum = weight_count = 0.0
    act_sum = act_count = 0.0
    seen: set[str] = set()
    for c in counts:
        w = _lookup(weight_bits, c.name, "weight_bits", c.weight_channels) if c.weights else None
        b = float(_lookup(bias_bits, c.name, "bias_bits", 1)[0]) if c.bias else None
        views = []
        for t in c.inputs:
            bits = act[t["tensor"]]
            views.append(
                _view(bits, int(t["view_channels"]), f"{c.name}: activation_bits[{t['tensor']!r}]")
            )
            if t["tensor"] not in seen:
                seen.add(t["tensor"])
                act_sum += float(np.sum(bits)) * int(t["elements"])
                act_count += bits.size * int(t["elements"])
        # parameter storage: k-bit values count k/32
        layer_storage = 0.0
        if w is not None:
            layer_storage += float(np.sum(w)) * c.weights_per_channel / FULL_BITS
            weight_sum += float(np.sum(w)) * c.weights_per_channel
            weight_count += c.weights
        if b is not None:
            layer_storage += c.bias * b / FULL_BITS
        # operations: a MAC is a multiplication and an addition at max(w_o, a_i)
        if c.kind == "float":  # a float island: its parameters and operations at 32 bits
            layer_storage += c.float_parameters
            layer_ops = float(c.operations)
        elif c.kind in MAC_KINDS:
            layer_ops = 2 * c.pair_macs * _pair_sum(w, views[0], c.groups) / FULL_BITS
        else:
            channels = c.output_channels
            bits = np.zeros(channels)
            for v in views + ([w] if w is not None else []):
                if v.size not in (1, channels):
                    raise QuantflowError(
                        f"layer count {c.name!r}: {v.size} channels of bits for its "
                        f"{channels} output channels"
                    )
                bits = np.maximum(bits, np.broadcast_to(v, (channels,)))
            layer_ops = c.operations / channels * float(np.sum(bits)) / FULL_BITS
        storage += layer_storage
        operations += layer_ops
        layers.append(
            {
                "name": c.name,
                "kind": c.kind,
                "parameters": c.parameters,
                "parameter_storage": layer_storage,
                "operation_count": c.operations,
                "operations": layer_ops,
                "mean_weight_bits": float(np.mean(w)) if w is not None else None,
                "bias_bits": b,
                "mean_operation_bits": (
                    FULL_BITS * layer_ops / c.operations if c.operations else None
                ),
            }
        )
    parameter_score = storage / refs["p_ref"]
    operation_score = operations / refs["f_ref"]
    return {
        "score": parameter_score + operation_score,
        "parameter_score": parameter_score,
        "operation_score": operation_score,
        "parameter_storage": storage,
        "operations": operations,
        "p_ref": refs["p_ref"],
        "f_ref": refs["f_ref"],
        "parameter_count": int(totals["p_ref"]),
        "operation_count": int(totals["f_ref"]),
        "multiplications": int(sum(c.multiplications for c in counts)),
        "additions": int(sum(c.additions for c in counts)),
        "mean_weight_bits": weight_sum / weight_count if weight_count else None,
        "mean_activation_bits": act_sum / act_count if act_count else None,
        "mean_operation_bits": (
            FULL_BITS * operations / totals["f_ref"] if totals["f_ref"] else None
        ),
        "layers": layers,
    }


def model_inputs(counts) -> list[str]:
    """The tensors operations read that no counted operation writes: the model inputs."""
    counts = _as_counts(counts)
    written = {c.output for c in counts}
    return [name for name in activation_tensors(counts) if name not in written]


def uniform_score(
    counts,
    weight_bits,
    activation_bits,
    *,
    bias_bits=FULL_BITS,
    input_bits=None,
    p_ref=None,
    f_ref=None,
) -> dict:
    """`score` with one bit width for all weights, one for all activations but the model
    inputs (`input_bits`, default `activation_bits`: 8 for an int8 model fed 8-bit
    pixels), one for biases."""
    tensors = activation_tensors(counts)
    inputs = set(model_inputs(counts))
    act = {
        name: (activation_bits if input_bits is None or name not in inputs else input_bits)
        for name in tensors
    }
    return score(counts, weight_bits, act, bias_bits=bias_bits, p_ref=p_ref, f_ref=f_ref)


def counts_record(model) -> dict:
    """What micronet.json holds for a float model: its name, reference totals and per-layer
    counts; or, when a layer cannot be counted, "layers": None and the reason in
    "unsupported" (that model's variants then have no MicroNet score, "n/a" in the report,
    and everything else is still compared)."""
    from quantflow.errors import QuantflowError
    from quantflow.quant.micronet.count import count_model

    try:
        counts = count_model(model)
    except QuantflowError as e:
        return {"model": model.name, "layers": None, "unsupported": str(e)}
    return {
        "model": model.name,
        **reference_counts(counts),
        "layers": [c.to_dict() for c in counts],
        "float_layers": [c.name for c in counts if c.kind == "float"],
    }
