"""FAT quantization schemes by name, `w<weight bits>a<activation bits>-<sym|asym>-<pc|pt>`.
Plain Python (no TensorFlow), so the workflow can plan with it."""

from __future__ import annotations

import re

from quantflow.errors import QuantflowError

SCHEME_PATTERN = re.compile(r"w([0-9]+)a([0-9]+)-(sym|asym)-(pc|pt)")


def parse_scheme(name: str) -> dict:
    """A quantization scheme from its name, `w<weight bits>a<activation bits>-<sym|asym>-
    <pc|pt>` (e.g. w8a8-sym-pc: 8-bit weights per channel, 8-bit symmetric activations), as
    keyword arguments of `fake_quant_model`."""
    match = SCHEME_PATTERN.fullmatch(name)
    if not match:
        raise QuantflowError(
            f"bad FAT scheme {name!r}: write w<weight bits>a<activation bits>-<sym|asym>-<pc|pt>"
            ", e.g. w8a8-sym-pc (sym/asym: activation ranges; pc/pt: weight thresholds per "
            "channel or per tensor)"
        )
    weight_bits, activation_bits, symmetry, granularity = match.groups()
    scheme = {
        "weight_bits": int(weight_bits),
        "activation_bits": int(activation_bits),
        "symmetric": symmetry == "sym",
        "per_channel": granularity == "pc",
    }
    for key in ("weight_bits", "activation_bits"):
        if not 2 <= scheme[key] <= 16:
            raise QuantflowError(f"FAT scheme {name!r}: {key} must be from 2 to 16")
    return scheme


def tflite_exportable(scheme: dict) -> bool:
    """Whether LiteRT's int8 kernels run the scheme exactly: 8-bit activations and at most
    8-bit weights (fewer weight bits are stored as int8 values on the coarser grid)."""
    return scheme["activation_bits"] == 8 and scheme["weight_bits"] <= 8


SCHEME_BITS = (2, 16)  # weight and activation bits a scheme may have


def scheme_problems(config: dict) -> list[str]:
    """The config's fat.schemes, checked when the workflow is planned: each
    `w<bits>a<bits>-<sym|asym>-<pc|pt>` with bits 2..16, a problem as one line in words
    (the schema would print its pattern)."""
    schemes = (config.get("fat") or {}).get("schemes")
    if not isinstance(schemes, list):
        return []
    problems = []
    for i, name in enumerate(schemes):
        where = f"fat.schemes[{i}]"
        match = SCHEME_PATTERN.fullmatch(name) if isinstance(name, str) else None
        if match is None:
            problems.append(
                f"{where}: {name!r} is not a scheme: write w<weight bits>a<activation bits>-"
                "<sym|asym>-<pc|pt>, e.g. w8a8-sym-pc (bits 2..16)"
            )
            continue
        for what, bits in (("weight bits", match[1]), ("activation bits", match[2])):
            if not SCHEME_BITS[0] <= int(bits) <= SCHEME_BITS[1]:
                problems.append(
                    f"{where}: {name!r} has {what} {int(bits)}; {what} are {SCHEME_BITS[0]}..{SCHEME_BITS[1]}"
                )
    return problems
