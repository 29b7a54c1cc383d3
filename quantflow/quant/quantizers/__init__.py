"""Quantizer implementations, each registered by kind and name on import (quantflow.quant.registry):
base (the interface), fat (FAT's trainable thresholds), adjustable (per-channel trainable
range and bit width). Importing this package registers them all, so a saved fake-quant
model of any kind loads."""

from quantflow.quant.quantizers import adjustable, base, fat  # noqa: F401
