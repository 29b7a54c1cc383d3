"""Quantizer objects: HOW one tensor is quantized, behind one interface, so the graph
transform and the layers do not care which algorithm a layer gets.

A quantizer is a plain Python object owned by a Keras layer (its host): `build(host,
channels)` creates its variables with `host.add_weight` (so they are the host's own
variables, saved and loaded with it), `quant_range()` gives the range (lo, hi) it
quantizes to (vectors per channel, else scalars), calling it quantizes a tensor,
`alpha_bounds()` lists its trainable variables with their bounds. What it quantizes:
`kind` ("weight": a kernel viewed with its output channels last; "activation": one
tensor), `per_channel`, `bits`.

Implementations are registered by kind and name (`register_quantizer`); the per-layer
config (`quantflow.quant.config`) names them. "fat" is FAT's (Goncharenko et al., arXiv
1812.07872):

* activations (`FatActivationQuantizer`): symmetric, T = clip(alpha, 0.5, 1) * T_max, range
  [-T, T * (1 - 2**(1-bits))] for signed (8 bits: scale T/128, int8 zero point exactly 0;
  [-T, T] would put the zero point on a tie that TensorFlow and the converter round
  differently) and [0, T] for non-negative tensors. Asymmetric: the calibrated range [m, M]
  with R = M - m becomes lo = m + clip(alpha_T) * R (alpha_T in [-0.2, 0.4], [0, 0.4] if
  non-negative) and hi = lo + clip(alpha_R, 0.5, 1) * R, then widened to contain 0. A
  fixed range has no variables.
* weights (`FatWeightQuantizer`): symmetric, narrow range, T = clip(alpha, 0.5, 1) *
  max|W| per output channel or per tensor (TFLite int8 weights have zero point 0), on the
  grid the TFLite converter stores (see `quantflow.quant.ops`: `fake_quant`, `grid_quant`,
  `int8_grid`, `folded_int8`).

The alphas start at their neutral values and are the only trainable variables."""

from __future__ import annotations

import keras

# the adjustable mixed-precision quantizers register themselves ("adjustable")


def _clip(variable, bounds: tuple[float, float]):
    return keras.ops.clip(variable, bounds[0], bounds[1])


class Quantizer:
    """The common interface (see the module doc). Subclasses set `kind` by registering."""

    kind: str = ""
    registered_name: str = ""
    per_channel: bool = False
    # the grid is one TFLite int8 tensor's (fixed bits, one scale per tensor for
    # activations): the layers next to it then simulate TFLite's integer arithmetic
    int8_exact: bool = True

    def __init__(self, bits: int):
        self.bits = int(bits)

    def build(self, host, channels: int | None = None) -> None:
        """Create the variables on `host` (a Keras layer); `channels` for per-channel ones."""

    def quant_range(self):
        """(lo, hi) as tensors: per output channel vectors or scalars."""
        raise NotImplementedError

    def __call__(self, x):
        raise NotImplementedError

    def alpha_bounds(self) -> list[tuple]:
        """(variable, low, high) of each trainable variable."""
        return []

    @property
    def trainable_variables(self) -> list:
        return [variable for variable, _, _ in self.alpha_bounds()]

    def describe(self) -> dict:
        """Statistics, trainable values and effective range as plain numbers."""
        raise NotImplementedError
