"""What an adjustable target trains with (`Settings`, the per-layer config) and the model the
search starts from: adjustable quantizers everywhere, calibrated or initialised from FAT."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from quantflow.errors import QuantflowError
from quantflow.quant.adjustable.targets import DEFAULT_MAX_BITS
from quantflow.quant.micronet import score as micronet

QUANT_INFO_FORMAT = 1


@dataclass
class Settings:
    """One target's settings (config `adjustable: targets: <name>: ...` over the section's
    defaults)."""

    weight_bits: int = 8  # initial bit width n (beta = 1)
    activation_bits: int = 8
    min_bits: int = 2
    max_bits: int = DEFAULT_MAX_BITS
    metric_weight: float = 1.0
    target_score: float | None = None
    cls_weight: float = 1.0
    kd_weight: float = 1.0
    gamma: float = 0.7
    images: int = 20000
    validation_images: int = 1000
    batch_size: int = 50
    epochs: int = 2
    mini_epochs: int = 10
    learning_rate: float = 5e-5  # weights and ranges
    bits_learning_rate: float = 1e-2
    swa_epochs: int = 1
    swa_delay: float = 0.2
    swa_freq: float = 0.1
    swa_learning_rate: float = 5e-5
    tolerance: float = 1.0  # percentage points of held-out top-1 below the float model
    reference: str = "model"  # or micronet_imagenet
    calibration_batches: int = 10
    # the deployment-aware search: layers end as INT4 (all channels <= 4 bits) or int8
    # (quantflow.quant.adjustable.storage); "per-channel": any bits per channel
    storage: str = "int4-int8"
    int4_share: float = 0.9  # the share of <= 4-bit channels that moves a layer to INT4

    @classmethod
    def from_dict(cls, data: dict) -> "Settings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise QuantflowError(
                f"adjustable: unknown settings {unknown}; known: {', '.join(sorted(known))}"
            )
        settings = cls(**data)
        settings.check()
        return settings

    def check(self) -> None:
        if not 1 <= self.min_bits <= self.max_bits <= 16:
            raise QuantflowError(
                f"adjustable: need 1 <= min_bits <= max_bits <= 16, got {self.min_bits}, "
                f"{self.max_bits}"
            )
        for what in ("weight_bits", "activation_bits"):
            if not 2 <= getattr(self, what) <= 16:
                raise QuantflowError(f"adjustable: {what} must be 2..16")
        if self.reference not in micronet.REFERENCES:
            raise QuantflowError(
                f"adjustable: reference must be one of {', '.join(micronet.REFERENCES)}"
            )
        if self.epochs < 1 or self.mini_epochs < 1 or self.batch_size < 1 or self.images < 1:
            raise QuantflowError("adjustable: epochs, mini_epochs, batch_size, images >= 1")
        if self.storage not in ("int4-int8", "per-channel"):
            raise QuantflowError(
                f"adjustable: storage must be int4-int8 or per-channel, got {self.storage!r}"
            )
        if not 0 < self.int4_share <= 1:
            raise QuantflowError("adjustable: int4_share must be in (0, 1]")
        if not 0 < self.swa_freq <= 1 or not 0 <= self.swa_delay < 1 or self.swa_epochs < 0:
            raise QuantflowError("adjustable: need 0 < swa_freq <= 1, 0 <= swa_delay < 1")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def quant_config(settings: Settings, overrides: dict | None = None):
    """The per-layer config: adjustable quantizers for weights and activations."""
    from quantflow.quant.config import QuantConfig

    return QuantConfig(
        {
            "weight_bits": settings.weight_bits,
            "activation_bits": settings.activation_bits,
            "per_channel": True,
            "symmetric": True,
            "weight_quantizer": "adjustable",
            "activation_quantizer": "adjustable",
            "min_bits": settings.min_bits,
            "max_bits": settings.max_bits,
        },
        overrides,
    )


def build_model(float_model, settings: Settings, overrides: dict | None = None):
    """The adjustable fake-quant twin of `float_model` (calibrate it before use; `train`
    trains its folded kernels and biases too)."""
    from quantflow.quant.transform import fake_quant_model

    return fake_quant_model(float_model, config=quant_config(settings, overrides))


def _ops(model):
    from quantflow.quant.calibrate import weight_quantizers

    return weight_quantizers(model)


def _activations(model):
    from quantflow.quant.calibrate import activation_quantizers

    return activation_quantizers(model)


def calibrate(model, images, settings: Settings, batch_size: int = 50) -> dict:
    """Per-channel activation ranges (max) and weight ranges; alpha = beta = 1."""
    from quantflow.quant.calibrate import calibrate as _calibrate

    return _calibrate(model, images, settings.calibration_batches, batch_size=batch_size)


def init_from_fat(model, fat_trained: dict) -> dict:
    """Start from FAT's trained thresholds of an 8-bit per-channel symmetric scheme
    (`quantflow.quant.fat.thresholds.load_thresholds(...)["trained"]`): weight channels take FAT's alpha
    (same T_max, the same folded kernel); an activation channel whose calibrated range
    exceeds FAT's trained per-tensor threshold T is clipped to T (alpha = T / T_c, at
    least 0.5). Returns {"weights": n, "activations": n} of quantizers initialised."""
    done = {"weights": 0, "activations": 0}
    for layer in _ops(model):
        row = fat_trained.get(f"{layer.name}/kernel")
        if row is None or "alpha" not in row:
            continue
        alpha = np.asarray(row["alpha"], np.float32)
        q = layer.quantizer
        if alpha.size not in (1, q.channels):
            continue
        q.alpha.assign(np.broadcast_to(alpha, (q.channels,)).astype(np.float32))
        done["weights"] += 1
    for act in _activations(model):
        row = fat_trained.get(act.name)
        q = act.quantizer
        if row is None or q.fixed_range is not None or "alpha" not in row:
            continue
        t_fat = float(row["alpha"]) * float(row["t_max"])
        t_c = np.asarray(q.t_max.numpy(), np.float64)
        alpha = np.clip(t_fat / np.maximum(t_c, 1e-12), q.alpha_range[0], 1.0)
        q.alpha.assign(alpha.astype(np.float32))
        done["activations"] += 1
    return done
