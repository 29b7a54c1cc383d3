"""The quantization core shared by FAT, adjustable mixed precision and diagnosis.

    config      WHAT each layer gets: scheme defaults + overrides by layer-name glob (no TF)
    quantizers  HOW a tensor is quantized: the Quantizer interface, FAT's implementations
    adjustable  the adjustable mixed-precision quantizers (per-channel trainable bits)
    ops         pure tensor math: fake quant with FAT/STE gradients, TFLite integer arithmetic
    layers      the Keras layers ("quantflow>ClassName"): ActivationQuant, QConv2D, ...
    rules       what TFLite does with each layer / activation (fusing, fixed ranges, grids)
    graph       flattening a functional model (nested models expanded)
    folding     kernels, BatchNorm folding, Rescaling / Normalization as MUL / ADD constants
    transform   the graph walk that builds the fake-quant model (`fake_quant_model`)
    calibrate   calibration, the thresholds report, quantizer accessors

`quantflow.fakequant` re-exports the public API. Importing this package imports nothing
heavy; the names below load their module on first use."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "QuantConfig": "config",
    "LayerQuant": "config",
    "Quantizer": "quantizers",
    "FatActivationQuantizer": "quantizers",
    "FatWeightQuantizer": "quantizers",
    "AdjustableActivationQuantizer": "adjustable",
    "AdjustableWeightQuantizer": "adjustable",
    "register_quantizer": "quantizers",
    "quantizer_class": "quantizers",
    "export_mode": "ops",
    "fake_quant_model": "transform",
    "flatten_graph": "graph",
    "calibrate": "calibrate",
    "thresholds": "calibrate",
    "activation_quantizers": "calibrate",
    "weight_quantizers": "calibrate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
