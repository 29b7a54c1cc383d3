"""Adjustable mixed-precision quantizers (registered as "adjustable" for weights and
activations), after the Texas-EIC MicroNet entry (tilmto/Adjustable-Quantization-MicroNet):
every channel has its own range scale alpha and precision scale beta, both trainable.

Per channel c, with T_c its calibrated range (weights: max|W| over the output channel;
activations: the channel's max |x|, or max x for a non-negative tensor), n the initial
bit width (`bits`, 8) and [.] rounding (half to even, `tf.round`):

    b_c   = clip([clip(beta_c, min_bits/n, max_bits/n) * n], min_bits, max_bits)
    T'_c  = clip(alpha_c, *alpha_range) * T_c                   (the effective range)
    S_c   = T'_c / D(b_c)                                       (the quantization step)
    q(x)  = S_c * clip([x / S_c], k_lo(b_c), k_hi(b_c))

with the grid of integers [k_lo, k_hi] and the divisor D by kind:

    unsigned activation ([0, T']):   D = 2^b - 1,      k in [0, 2^b - 1]
    signed activation  ([-T', ~T']): D = 2^(b-1),      k in [-2^(b-1), 2^(b-1) - 1]
    weight (symmetric, narrow):      D = 2^(b-1) - 1,  k in [-(2^(b-1) - 1), 2^(b-1) - 1]

The unsigned grid is S = alpha T / (2^[beta n] - 1) verbatim. The signed grids are that
formula over the range width 2T' with zero exactly on the grid (the reference divides
the width by 2^b - 1 and rounds the zero point, giving [-128, 127] * 2T'/255 at 8 bits).
At initialisation (alpha = beta = 1, b = n = 8) every grid is FAT's 8-bit grid of the same
tensor: weights T/127 per step on [-127, 127] (FAT's per-channel symmetric narrow-range
weight grid), signed activations T/128 on [-128, 127], unsigned ones T/255 on [0, 255]
(FAT's symmetric activation grids) -- but per channel for activations, where FAT has one
T per tensor. Only the rounding of exact ties differs (FAT's ops round half up).

Gradients: both roundings ([x / S] and [beta n]) are straight-through (`ste_round`); the
rest is differentiated as written, so d q / d S is [x/S] - x/S inside the grid and the
clipped integer outside it, and d q / d x is 1 inside the grid, 0 outside. beta reaches
the loss through S (and the grid's end points) via b; alpha through S. Clipping alpha and
beta to their bounds passes no gradient outside them (`alpha_bounds` lists the bounds;
`quantflow.quant.calibrate.clip_alphas` keeps the variables inside).

These grids are per channel for activations and have trainable bit widths, so a layer
next to one computes in float (no TFLite integer arithmetic: `int8_exact` is False) and
the model does not convert to TFLite as it is."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from quantflow.errors import QuantflowError
from quantflow.quant.ops import MIN_THRESHOLD, fake_quant, ste_round
from quantflow.quant.quantizers.base import Quantizer
from quantflow.quant.registry import register_quantizer

ALPHA_RANGE = (0.5, 1.3)  # the reference's r_alpha
MIN_BITS = 2


class AdjustableQuantizer(Quantizer):
    """Per-channel T_max (calibrated, not trainable), alpha and beta (trainable); see the
    module doc. `min_bits` / `max_bits` bound the bit widths (default 2 .. `bits`)."""

    per_channel = True
    int8_exact = False
    signed = True

    def __init__(
        self,
        bits: int = 8,
        min_bits: int = MIN_BITS,
        max_bits: int | None = None,
        alpha_range: tuple[float, float] = ALPHA_RANGE,
    ):
        super().__init__(bits)
        self.min_bits = int(min_bits)
        self.max_bits = int(self.bits if max_bits is None else max_bits)
        if not 1 <= self.min_bits <= self.max_bits <= 16:
            raise QuantflowError(
                f"adjustable quantizer: need 1 <= min_bits <= max_bits <= 16, "
                f"got {self.min_bits}, {self.max_bits}"
            )
        self.alpha_range = tuple(float(v) for v in alpha_range)
        self.channels = None

    def _build(self, host, channels: int, prefix: str = "") -> None:
        self.channels = int(channels)
        shape = (self.channels,)
        self.t_max = host.add_weight(
            shape=shape, initializer="ones", trainable=False, name=f"{prefix}t_max"
        )
        self.alpha = host.add_weight(shape=shape, initializer="ones", name=f"{prefix}alpha")
        self.beta = host.add_weight(shape=shape, initializer="ones", name=f"{prefix}beta")

    def beta_range(self) -> tuple[float, float]:
        return self.min_bits / self.bits, self.max_bits / self.bits

    def bits_tensor(self):
        """b per channel, float, rounded with a straight-through gradient to beta."""
        beta = keras.ops.clip(self.beta, *self.beta_range())
        bits = ste_round(beta * float(self.bits))
        return tf.clip_by_value(bits, float(self.min_bits), float(self.max_bits))

    def channel_bits(self) -> np.ndarray:
        """The integer bit width of each channel."""
        return np.rint(np.asarray(self.bits_tensor())).astype(np.int64)

    def threshold(self):
        """T' = clip(alpha) * T_max per channel."""
        return keras.ops.clip(self.alpha, *self.alpha_range) * self.t_max

    def _grid(self, bits):
        """(D, k_lo, k_hi) as tensors of `bits`' shape (module doc)."""
        raise NotImplementedError

    def scale(self):
        """The quantization step S per channel."""
        divisor, _, _ = self._grid(self.bits_tensor())
        return self.threshold() / divisor

    def quant_range(self):
        divisor, k_lo, k_hi = self._grid(self.bits_tensor())
        step = self.threshold() / divisor
        return k_lo * step, k_hi * step

    def _quantize(self, x):
        divisor, k_lo, k_hi = self._grid(self.bits_tensor())
        step = tf.maximum(self.threshold() / divisor, MIN_THRESHOLD * 1e-3)
        k = ste_round(x / step)
        return tf.minimum(tf.maximum(k, k_lo), k_hi) * step

    def alpha_bounds(self) -> list[tuple]:
        return [(self.alpha, *self.alpha_range), (self.beta, *self.beta_range())]

    def _neutral(self, t_max) -> None:
        t_max = np.broadcast_to(np.asarray(t_max, np.float32), (self.channels,))
        self.t_max.assign(np.maximum(t_max, MIN_THRESHOLD).astype(np.float32))
        self.alpha.assign(np.ones(self.channels, np.float32))
        self.beta.assign(np.ones(self.channels, np.float32))

    def describe(self) -> dict:
        lo, hi = (np.asarray(v) for v in self.quant_range())
        return {
            "bits": self.bits,
            "min_bits": self.min_bits,
            "max_bits": self.max_bits,
            "per_channel": True,
            "signed": self.signed,
            "t_max": np.asarray(self.t_max.numpy()).tolist(),
            "alpha": np.asarray(self.alpha.numpy()).tolist(),
            "beta": np.asarray(self.beta.numpy()).tolist(),
            "channel_bits": self.channel_bits().tolist(),
            "threshold": np.asarray(self.threshold()).tolist(),
            "step": np.asarray(self.scale()).tolist(),
            "range": [lo.tolist(), hi.tolist()],
        }


@register_quantizer("weight", "adjustable")
class AdjustableWeightQuantizer(AdjustableQuantizer):
    """A kernel viewed with its output channels last (conv, depthwise, dense), symmetric
    signed narrow range per output channel. `per_channel=False` shares one alpha / beta /
    T over the kernel. `folded` is accepted (the layers pass it) and ignored."""

    def __init__(self, bits: int = 8, per_channel: bool = True, folded: bool = False, **options):
        super().__init__(bits, **options)
        self.per_channel = bool(per_channel)

    def build(self, host, channels: int | None = None) -> None:
        self._build(host, channels if self.per_channel else 1, prefix="kernel_")

    def _grid(self, bits):
        levels = 2.0 ** (bits - 1.0) - 1.0
        return levels, -levels, levels

    def __call__(self, view):
        return self._quantize(view)

    def reset(self, view) -> None:
        """T_max = max|W| per output channel (or of the kernel); alpha = beta = 1."""
        view = np.abs(np.asarray(view))
        t_max = view.reshape(-1, view.shape[-1]).max(axis=0)
        self._neutral(t_max if self.per_channel else t_max.max())

    def describe(self) -> dict:
        return {"kind": "weight", **super().describe(), "per_channel": self.per_channel}


@register_quantizer("activation", "adjustable")
class AdjustableActivationQuantizer(AdjustableQuantizer):
    """Per channel (last axis) of an activation tensor: symmetric signed, or unsigned
    ([0, T']) when `signed=False` (a non-negative tensor, e.g. after ReLU). Symmetric only.
    `fixed_range` (the model input's pixel range): FAT's fixed 8-bit-style fake quant to
    that range per tensor, no variables."""

    def __init__(
        self,
        bits: int = 8,
        signed: bool = True,
        symmetric: bool = True,
        fixed_range=None,
        **options,
    ):
        super().__init__(bits, **options)
        self.signed = bool(signed)
        self.symmetric = bool(symmetric)
        self.fixed_range = None if fixed_range is None else tuple(float(v) for v in fixed_range)
        if not self.symmetric and self.fixed_range is None:
            raise QuantflowError(
                "the adjustable activation quantizer is symmetric only (symmetric: true)"
            )

    def build(self, host, channels: int | None = None) -> None:
        if channels is None:
            raise QuantflowError("adjustable activation quantizer: unknown channel count")
        if self.fixed_range is None:
            self._build(host, channels)
        else:
            self.channels = int(channels)

    def _grid(self, bits):
        if not self.signed:
            return 2.0**bits - 1.0, tf.zeros_like(bits), 2.0**bits - 1.0
        half = 2.0 ** (bits - 1.0)
        return half, -half, half - 1.0

    def bits_tensor(self):
        if self.fixed_range is not None:
            return tf.fill((self.channels,), float(self.bits))
        return super().bits_tensor()

    def quant_range(self):
        if self.fixed_range is not None:
            return tf.constant(self.fixed_range[0]), tf.constant(self.fixed_range[1])
        return super().quant_range()

    def scale(self):
        if self.fixed_range is not None:
            lo, hi = self.fixed_range
            return tf.constant((hi - lo) / (2**self.bits - 1), tf.float32)
        return super().scale()

    def __call__(self, x):
        if self.fixed_range is not None:
            lo, hi = self.quant_range()
            return fake_quant(x, lo, hi, bits=self.bits)
        return self._quantize(x)

    def alpha_bounds(self) -> list[tuple]:
        return [] if self.fixed_range is not None else super().alpha_bounds()

    def set_statistics(self, low, high) -> None:
        """T_max per channel from the calibrated [low, high] (scalars or per-channel
        arrays): max(|high|, |low|) if signed, else max(high, 0); alpha = beta = 1."""
        if self.fixed_range is not None:
            return
        low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        t = np.maximum(np.abs(high), np.abs(low)) if self.signed else np.maximum(high, 0.0)
        self._neutral(t)

    def describe(self) -> dict:
        if self.fixed_range is not None:
            return {
                "kind": "activation",
                "bits": self.bits,
                "signed": self.signed,
                "fixed": True,
                "range": list(self.fixed_range),
                "channel_bits": self.channel_bits().tolist(),
            }
        return {"kind": "activation", "fixed": False, **super().describe()}
