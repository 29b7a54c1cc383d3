"""WHAT each layer gets: a per-layer quantization config. Scheme defaults (weight bits,
activation bits, symmetric activations, per-channel weights, and which registered
quantizer implements weights and activations) with overrides by layer-name pattern
(fnmatch globs, matched against the float layer's name and against its path in the
flattened graph, "backbone/conv"); every matching override applies, in order, later ones
winning. The graph transform asks `for_layer(name, path)` for each layer it rewrites;
the activation quantizers it places after a layer (and the constants of its MUL / ADD
steps) follow that layer's settings, the model input's follow the input's name.

    QuantConfig.from_scheme("w4a8-sym-pc", overrides={"logits": {"weight_bits": 8},
                                                       "block_*_dw": {"per_channel": False}})

Plain Python (no TensorFlow): the workflow can validate a config while planning."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from fnmatch import fnmatchcase

from quantflow.errors import QuantflowError


@dataclass(frozen=True)
class LayerQuant:
    """The settings of one layer (and of the activation quantizers placed after it)."""

    weight_bits: int = 8
    activation_bits: int = 8
    per_channel: bool = True  # weight thresholds per output channel (else per tensor)
    symmetric: bool = True  # activation ranges (weights are always symmetric)
    weight_quantizer: str = "fat"  # a name registered in quantflow.quant.quantizers
    activation_quantizer: str = "fat"
    # bounds of trainable bit widths (the adjustable quantizer only; None: its defaults,
    # 2 and the bits above): the initial width is weight_bits / activation_bits
    min_bits: int | None = None
    max_bits: int | None = None

    def quantizer_options(self, kind: str) -> dict:
        """Keyword options for the `kind` quantizer besides bits (only those set)."""
        name = self.weight_quantizer if kind == "weight" else self.activation_quantizer
        options = {k: getattr(self, k) for k in ("min_bits", "max_bits")}
        options = {k: v for k, v in options.items() if v is not None}
        return options if name == "adjustable" else {}


SETTINGS = tuple(f.name for f in fields(LayerQuant))


def _check(settings: dict, where: str) -> dict:
    """`settings` validated (known keys, bits 2..16, booleans, quantizer names as text)."""
    if not isinstance(settings, dict):
        raise QuantflowError(f"{where}expected a mapping of settings, got {settings!r}")
    for key, value in settings.items():
        if key not in SETTINGS:
            raise QuantflowError(f"{where}unknown setting {key!r}; known: {', '.join(SETTINGS)}")
        if key in ("min_bits", "max_bits") and value is None:
            continue
        if key.endswith("_bits"):
            whole = hasattr(value, "__index__") and not isinstance(value, bool)
            low = 1 if key in ("min_bits", "max_bits") else 2
            if not whole or not low <= int(value) <= 16:
                raise QuantflowError(
                    f"{where}{key} must be a whole number from {low} to 16, got {value!r}"
                )
        elif key in ("per_channel", "symmetric"):
            if not isinstance(value, bool):
                raise QuantflowError(f"{where}{key} must be true or false, got {value!r}")
        elif not isinstance(value, str) or not value:
            raise QuantflowError(f"{where}{key} must be a quantizer name, got {value!r}")
    return {
        k: (int(v) if k.endswith("_bits") and v is not None else v) for k, v in settings.items()
    }


class QuantConfig:
    """Scheme defaults plus overrides by layer-name pattern (see the module doc)."""

    def __init__(self, default: LayerQuant | dict | None = None, overrides: dict | None = None):
        if default is None:
            default = LayerQuant()
        elif isinstance(default, dict):
            default = LayerQuant(**_check(default, ""))
        else:
            _check(asdict(default), "")
        self.default = default
        self.overrides: dict[str, dict] = {}
        for pattern, settings in (overrides or {}).items():
            if not isinstance(pattern, str) or not pattern:
                raise QuantflowError(f"override pattern must be a layer-name glob, got {pattern!r}")
            self.overrides[pattern] = _check(settings, f"override {pattern!r}: ")

    @classmethod
    def from_scheme(cls, scheme: str | dict, overrides: dict | None = None) -> "QuantConfig":
        """A FAT scheme (a name such as "w8a8-sym-pc", or `parse_scheme`'s dict) as the
        defaults, plus `overrides`."""
        if isinstance(scheme, str):
            from quantflow.quant.schemes import parse_scheme

            scheme = parse_scheme(scheme)
        return cls(dict(scheme), overrides)

    def matching(self, name: str, path: str | None = None) -> list[str]:
        """The override patterns that apply to layer `name` (at `path`), in order."""
        return [
            p
            for p in self.overrides
            if fnmatchcase(name, p) or (path is not None and fnmatchcase(path, p))
        ]

    def for_layer(self, name: str, path: str | None = None) -> LayerQuant:
        """The settings of layer `name` (at `path` in the flattened graph)."""
        spec = self.default
        for pattern in self.matching(name, path):
            spec = replace(spec, **self.overrides[pattern])
        return spec

    def unmatched(self, names) -> list[str]:
        """The override patterns that match none of `names` ((name, path) pairs)."""
        used = {p for name, path in names for p in self.matching(name, path)}
        return [p for p in self.overrides if p not in used]

    def to_dict(self) -> dict:
        return {
            "default": asdict(self.default),
            "overrides": {k: dict(v) for k, v in self.overrides.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "QuantConfig":
        unknown = set(data) - {"default", "overrides"}
        if unknown:
            raise QuantflowError(f"quantization config: unknown keys {sorted(unknown)}")
        return cls(data.get("default"), data.get("overrides"))

    def __eq__(self, other) -> bool:
        return isinstance(other, QuantConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"QuantConfig({self.default!r}, overrides={self.overrides!r})"
