"""FAT's quantizers (registered as "fat"; Goncharenko et al., arXiv 1812.07872): trainable
thresholds on TFLite's int8 grids. See quantflow.quant.quantizers.base for the interface."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from quantflow.quant.ops import (
    MIN_THRESHOLD,
    f32_step,
    fake_quant,
    folded_int8,
    grid_quant,
    int8_grid,
)
from quantflow.quant.lowering import INT4_BITS
from quantflow.quant.quantizers.base import Quantizer, _clip
from quantflow.quant.registry import register_quantizer

# the adjustable mixed-precision quantizers register themselves ("adjustable")


ALPHA_BOUNDS = (0.5, 1.0)  # threshold scale (symmetric) and width scale (asymmetric)


SHIFT_BOUNDS = {True: (-0.2, 0.4), False: (0.0, 0.4)}  # asymmetric left edge, by signedness


@register_quantizer("activation", "fat")
class FatActivationQuantizer(Quantizer):
    """Per-tensor fake quantization of an activation with FAT thresholds. `signed=False`
    marks a tensor known to be non-negative; `fixed_range` (lo, hi) gives a constant range
    (no variables), e.g. the model input's pixel range."""

    def __init__(
        self, bits: int = 8, signed: bool = True, symmetric: bool = True, fixed_range=None
    ):
        super().__init__(bits)
        self.signed, self.symmetric = bool(signed), bool(symmetric)
        self.fixed_range = None if fixed_range is None else tuple(float(v) for v in fixed_range)

    def build(self, host, channels: int | None = None) -> None:
        if self.fixed_range is not None:
            pass
        elif self.symmetric:
            self.t_max = host.add_weight(
                shape=(), initializer="ones", trainable=False, name="t_max"
            )
            self.alpha = host.add_weight(shape=(), initializer="ones", name="alpha")
        else:
            self.r_min = host.add_weight(
                shape=(),
                initializer="zeros" if not self.signed else keras.initializers.Constant(-1.0),
                trainable=False,
                name="r_min",
            )
            self.r_max = host.add_weight(
                shape=(), initializer="ones", trainable=False, name="r_max"
            )
            self.alpha_t = host.add_weight(shape=(), initializer="zeros", name="alpha_t")
            self.alpha_r = host.add_weight(shape=(), initializer="ones", name="alpha_r")

    def quant_range(self):
        if self.fixed_range is not None:
            return tf.constant(self.fixed_range[0]), tf.constant(self.fixed_range[1])
        if self.symmetric:
            t = _clip(self.alpha, ALPHA_BOUNDS) * self.t_max
            if not self.signed:
                return tf.zeros_like(t), t
            # [-T, T] would put the zero point on a tie (127.5 steps), which TensorFlow's
            # nudging and the converter round either way: int8 zero point 0 or -1
            return -t, t * (1.0 - 2.0 ** (1 - self.bits))
        width = self.r_max - self.r_min
        lo = self.r_min + _clip(self.alpha_t, SHIFT_BOUNDS[self.signed]) * width
        hi = lo + _clip(self.alpha_r, ALPHA_BOUNDS) * width
        return tf.minimum(lo, 0.0), tf.maximum(hi, 0.0)

    def __call__(self, x):
        lo, hi = self.quant_range()
        return fake_quant(x, lo, hi, bits=self.bits)

    def alpha_bounds(self) -> list[tuple]:
        if self.fixed_range is not None:
            return []
        if self.symmetric:
            return [(self.alpha, *ALPHA_BOUNDS)]
        return [(self.alpha_t, *SHIFT_BOUNDS[self.signed]), (self.alpha_r, *ALPHA_BOUNDS)]

    def set_statistics(self, low: float, high: float) -> None:
        """Set the calibrated float range [low, high] of the tensor; alphas back to neutral."""
        if self.fixed_range is not None:
            return
        if self.symmetric:
            t = max(abs(high), 0.0 if not self.signed else abs(low))
            self.t_max.assign(max(t, MIN_THRESHOLD))
            self.alpha.assign(1.0)
        else:
            low = max(low, 0.0) if not self.signed else min(low, 0.0)
            high = max(high, low + MIN_THRESHOLD)
            self.r_min.assign(low)
            self.r_max.assign(high)
            self.alpha_t.assign(0.0)
            self.alpha_r.assign(1.0)

    def describe(self) -> dict:
        lo, hi = (float(v) for v in self.quant_range())
        info = {
            "kind": "activation",
            "bits": self.bits,
            "signed": self.signed,
            "fixed": self.fixed_range is not None,
            "range": [lo, hi],
        }
        if self.fixed_range is None and self.symmetric:
            info.update(t_max=float(self.t_max.numpy()), alpha=float(self.alpha.numpy()))
        elif self.fixed_range is None:
            info.update(
                r_min=float(self.r_min.numpy()),
                r_max=float(self.r_max.numpy()),
                alpha_t=float(self.alpha_t.numpy()),
                alpha_r=float(self.alpha_r.numpy()),
            )
        return info


@register_quantizer("weight", "fat")
class FatWeightQuantizer(Quantizer):
    """A kernel (viewed with its output channels last) quantized symmetric, narrow range, to
    [-T, T], T = clip(alpha) * max|W|, per output channel or per tensor, on the grid the
    deployable file stores. At most 4 bits (`INT4_BITS`) the file holds the b-bit codes as
    INT4 with the b-bit step as scale, and so does the simulation (its int32 bias on the
    grid s_in x that step): CONV_2D and DEPTHWISE_CONV_2D by the b-bit fake-quant op, which
    the converter stores as INT4 itself; a Dense kernel (`folded`: per channel by
    `grid_quant`, the converter rejects per-channel fake-quant ops for FULLY_CONNECTED) is
    repacked as INT4 after conversion (`quantflow.deploy.int4`). From 5 to 7 bits the file
    holds int8: a Dense kernel as FULLY_CONNECTED holds it (`folded_int8`), other kernels by
    `int8_grid`."""

    def __init__(self, bits: int = 8, per_channel: bool = True, folded: bool = False):
        super().__init__(bits)
        self.per_channel, self.folded = bool(per_channel), bool(folded)

    def build(self, host, channels: int | None = None) -> None:
        thresholds = (channels,) if self.per_channel else ()
        self.t_max = host.add_weight(
            shape=thresholds, initializer="ones", trainable=False, name="kernel_t_max"
        )
        self.alpha = host.add_weight(shape=thresholds, initializer="ones", name="kernel_alpha")

    def threshold(self):
        """T, per channel or scalar."""
        return _clip(self.alpha, ALPHA_BOUNDS) * self.t_max

    def quant_range(self):
        t = self.threshold()
        return -t, t

    def scale(self):
        """The scale of the weights TFLite stores (per output channel or scalar): at most
        4 bits the b-bit step itself (stored as INT4: `quantflow.deploy.int4`), from 5 to 7
        bits an int8 step that divides it, at 8 bits the int8 step."""
        t = self.threshold()
        if self.bits <= INT4_BITS:
            return f32_step(-t, t, 2**self.bits - 2)
        if self.bits < 8 and not (self.per_channel and self.folded):
            levels = 2 ** (self.bits - 1) - 1  # `int8_grid`: k times finer than the b-bit grid
            return f32_step(-t, t, 2 * levels * (127 // levels))
        return f32_step(-t, t, 2 ** min(self.bits, 8) - 2)

    def __call__(self, view):
        t = self.threshold()
        if self.per_channel and self.folded:
            view = grid_quant(view, t, bits=self.bits)
            if INT4_BITS < self.bits < 8:  # what FULLY_CONNECTED will hold: see `folded_int8`
                view = folded_int8(view, t)
        elif self.bits <= INT4_BITS:  # the converter stores it as INT4 with the b-bit step
            view = fake_quant(
                view, -t, t, bits=self.bits, narrow_range=True, per_channel=self.per_channel
            )
        elif self.bits < 8:  # the b-bit grid by plain ops, handed over as int8: `int8_grid`
            view = grid_quant(view, t, bits=self.bits, per_channel=self.per_channel)
            view = int8_grid(view, t, bits=self.bits, per_channel=self.per_channel)
        else:
            view = fake_quant(
                view, -t, t, bits=self.bits, narrow_range=True, per_channel=self.per_channel
            )
        return view

    def reset(self, view: np.ndarray) -> None:
        """T_max = max|W| of the kernel view (per channel or tensor), alpha = 1."""
        view = np.abs(np.asarray(view))
        t_max = view.reshape(-1, view.shape[-1]).max(axis=0)
        t_max = np.maximum(t_max if self.per_channel else t_max.max(), MIN_THRESHOLD)
        self.t_max.assign(t_max.astype(np.float32))
        self.alpha.assign(np.ones_like(t_max, dtype=np.float32))

    def alpha_bounds(self) -> list[tuple]:
        return [(self.alpha, *ALPHA_BOUNDS)]

    def describe(self) -> dict:
        t_max, alpha = np.asarray(self.t_max.numpy()), np.asarray(self.alpha.numpy())
        t = np.clip(alpha, *ALPHA_BOUNDS) * t_max
        return {
            "kind": "weight",
            "bits": self.bits,
            "per_channel": self.per_channel,
            "t_max": t_max.tolist(),
            "alpha": alpha.tolist(),
            "threshold": t.tolist(),
        }
