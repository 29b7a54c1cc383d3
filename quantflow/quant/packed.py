"""The packed size of a fake-quant model: what its quantized parameters take at their bit
widths (the size a simulation stands for)."""

from __future__ import annotations

import numpy as np

from quantflow.quant.calibrate import weight_quantizers
from quantflow.quant.schemes import parse_scheme, tflite_exportable  # noqa: F401 (re-exported)


def packed_size_bytes(qmodel) -> int:
    """Bytes of the quantized layers' parameters packed at their bit width: kernels at
    `bits` per value (an adjustable quantizer's channels each at their own bits), biases
    and per-channel scales at 32 bits; a float island's weights at 32 bits."""
    from quantflow.quant.lowering import ISLAND_SUFFIX

    bits = 32 * sum(
        int(np.prod(w.shape))
        for layer in qmodel.layers
        if layer.name.endswith(ISLAND_SUFFIX)
        for w in layer.weights
    )
    for layer in weight_quantizers(qmodel):
        kernel = int(np.prod(layer.kernel.shape))
        channels = int(np.prod(layer.bias.shape))
        scales = int(np.prod(layer.t_max.shape)) or 1
        if hasattr(layer.quantizer, "channel_bits"):  # adjustable: bits per output channel
            per_channel = np.broadcast_to(layer.quantizer.channel_bits(), (channels,))
            bits += kernel // channels * int(np.sum(per_channel))
        else:
            bits += kernel * layer.bits
        bits += 32 * (channels + scales)
    return (bits + 7) // 8
