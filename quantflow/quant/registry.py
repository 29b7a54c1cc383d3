"""The quantizer registry: implementations register themselves by kind ("weight",
"activation") and name; the per-layer config (quantflow.quant.config) names them."""

from __future__ import annotations

from quantflow.errors import QuantflowError

# the adjustable mixed-precision quantizers register themselves ("adjustable")


KINDS = ("weight", "activation")


_REGISTRY: dict[tuple[str, str], type] = {}


def register_quantizer(kind: str, name: str):
    """Class decorator: make a quantizer class available to the per-layer config as
    `name` for `kind` ("weight" or "activation")."""
    if kind not in KINDS:
        raise ValueError(f"quantizer kind must be one of {KINDS}, got {kind!r}")

    def register(cls):
        cls.kind, cls.registered_name = kind, name
        _REGISTRY[(kind, name)] = cls
        return cls

    return register


def quantizer_class(kind: str, name: str) -> type:
    """The quantizer class registered as `name` for `kind`."""
    try:
        return _REGISTRY[(kind, name)]
    except KeyError:
        known = sorted(n for k, n in _REGISTRY if k == kind)
        raise QuantflowError(
            f"unknown {kind} quantizer {name!r}; registered: {', '.join(known)}"
        ) from None


def quantizer_names(kind: str) -> list[str]:
    """The registered quantizer names of `kind` ("weight" or "activation"), sorted."""
    return sorted(n for k, n in _REGISTRY if k == kind)
