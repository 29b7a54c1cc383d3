"""The runtime's storage classes, for the deployment-aware search (setting `storage:
int4-int8`, the default): LiteRT holds a layer's kernel as INT4 (every output channel at
most `INT4_BITS` bits, two codes a byte) or as int8, nothing in between. A layer whose
channels are mostly (`int4_share`) at <= 4 bits after a bit-width step joins the int4 class
for good: all its channels at 4 bits (the storage costs the same, so the spare levels are
free accuracy), its bit widths no longer trained. The others stay in the search, stored as
int8. `storage: per-channel` is the free search of the reference (any bits per channel; the
deployable file then stores a layer as INT4 only where every channel happens to be <= 4)."""

from __future__ import annotations

import numpy as np

from quantflow.quant.adjustable.settings import _ops
from quantflow.quant.lowering import INT4_BITS

STORAGE = ("int4-int8", "per-channel")


def storage_class(bits) -> str:
    """'int4' when every channel's bit width is at most INT4_BITS, else 'int8'."""
    return "int4" if int(np.max(bits)) <= INT4_BITS else "int8"


def stored_bits(bits) -> list[int]:
    """The bits each channel takes in the file: its class's width."""
    width = INT4_BITS if storage_class(bits) == "int4" else 8
    return [width] * len(np.atleast_1d(bits))


def snap_to_int4(model, share: float) -> list[str]:
    """Put every weight quantizer of `model` whose share of channels at <= INT4_BITS bits
    is at least `share` (and which is not there yet) into the int4 class: bits fixed at
    INT4_BITS (min = max bits, beta = INT4_BITS / n). Returns the layers moved."""
    moved = []
    for layer in _ops(model):
        q = layer.quantizer
        if q.max_bits <= INT4_BITS and q.min_bits == q.max_bits:
            continue  # already there
        bits = q.channel_bits()
        if np.mean(bits <= INT4_BITS) >= share and q.min_bits <= INT4_BITS:
            q.min_bits = q.max_bits = INT4_BITS
            q.beta.assign(np.full(q.channels, INT4_BITS / q.bits, np.float32))
            moved.append(layer.name)
    return moved


def int4_layers(model) -> list[str]:
    """The layers whose kernels are in the int4 class."""
    return [
        layer.name
        for layer in _ops(model)
        if storage_class(layer.quantizer.channel_bits()) == "int4"
    ]
