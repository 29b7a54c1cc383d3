"""The packed size of a weight-only quantized weights.pickle: what its quantized variables
take at their bit width (the size the bin-<bits> and fixed-<bits> variants stand for)."""

from __future__ import annotations


def packed_size_bytes(data: dict) -> int:
    """Bytes to store a weights dict with its quantized variables packed at their bit width
    (plus 8 bytes of parameters each: bin's minimum and width, or fixed point's decimal
    shift, integer bits and sign flag)
    and every other variable (e.g. BatchNorm moving statistics) in float32."""
    quantization = data["metadata"].get("quantization") or {}
    quantized = set(quantization.get("quantized", ()))
    bits = int(quantization.get("bits", 32))
    total = 0
    for layer, roles in data["layers"].items():
        for role, array in roles.items():
            if f"{layer}/{role}" in quantized:
                total += -(-array.size * bits // 8) + 8
            else:
                total += array.size * 4
    return total
