"""Every variant the workflow evaluates, in one table of families: a variant's name, the
file it is evaluated from, where it runs, whether it is a deployable file or a
simulation, whose timing it takes and its bits. The rules plan from it
(`enumerate(config)`, `parse(name).model_file`), evaluation reads its extra inputs from it
and the report groups and scores by it; no other module parses a variant name.

    for name in enumerate(config):          # every variant a config evaluates, in order
        v = parse(name)                     # Variant(name, family, groups) or None
        v.model_file                        # under results/<dataset>/<model>/
        v.family.method, v.deployable, v.timed, v.bits(weightquant)

A new method is one `Family` row here (plus the rules that make its file). Plain Python:
no TensorFlow, so the workflow plans with it.

Bits (for the MicroNet score of every variant, `quant.micronet.score.uniform_score`):
    keras-float, tflite-fp32   everything at 32 bits (the reference: score 2.0)
    tflite-fp16                16-bit weights and biases (stored), float compute
    tflite-dynamic             8-bit weights; activations quantized to 8 bits on the fly
                               for the multiply-accumulates (float input), int32 biases
    tflite-int8[-cal*|-class*] 8-bit weights and activations (and input), int32 biases
    tflite-int16x8             8-bit weights, 16-bit activations, biases counted at 32
                               (TFLite stores int64: the score's widths stop at 32)
    tflite-int4-weights        4-bit weights, float compute
    tflite-static-int4         4-bit weights on CONV_2D / FULLY_CONNECTED, int8 activations
                               calibrated (ai-edge-quantizer's static recipe)
    tflite-dynamic-int4        4-bit weights, activations at 8 bits on the fly (XNNPACK's
                               dynamically quantized int8 x channelwise int4 kernels)
    bin-<b>, fixed-<b>         b-bit weights (and biases, unless weightquant keeps them
                               float), float activations: weight-only quantization
    fixed-<b>-tflite           its LiteRT file (b <= 8): kernels as int8 / INT4 codes,
                               float compute
    fat-<scheme>[-sim]         the scheme's weight and activation bits, 8-bit input,
                               int32 biases
    adjq-<target>[-int8]       none: per-channel bits of their own (their score.json)
    tflite-int8-float<k>       none (mixed int8 and float layers; not scored)
"""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

from quantflow.quant.adjustable.targets import exportable as adjustable_exportable
from quantflow.quant.adjustable.targets import target_settings
from quantflow.quant.schemes import parse_scheme, tflite_exportable

KEYS = ("weight_bits", "activation_bits", "bias_bits", "input_bits")
FLOAT_BITS = (32, 32, 32, 32)
INT8_BITS = (8, 8, 32, 8)

# the name fields: (regex, type)
FIELDS = {
    "images": (r"[0-9]+", int),
    "percent": (r"[0-9]+", int),
    "label": (r"[0-9]+", int),
    "k": (r"[0-9]+", int),
    "algorithm": (r"bin|fixed", str),
    "bits": (r"[0-9]+", int),
    "scheme": (r"w[0-9]+a[0-9]+-(?:sym|asym)-(?:pc|pt)", str),
    "target": (r"[a-z0-9]+", str),
}

# where in a config a family's variants come from: config -> the fields of each, in order.
# Families with the same source are enumerated instance by instance (fat-s, fat-s-sim, ...).
SOURCES: dict[str, Callable[[dict], list[dict]]] = {
    "calibration_sizes": lambda c: [
        {"images": n} for n in c.get("tflite", {}).get("calibration_sizes", [])
    ],
    "calibration_percents": lambda c: [
        {"percent": p} for p in c.get("tflite", {}).get("calibration_percents", [])
    ],
    "calibration_classes": lambda c: [
        {"label": k} for k in c.get("tflite", {}).get("calibration_classes", [])
    ],
    "float_fallback": lambda c: [{"k": k} for k in c.get("tflite", {}).get("float_fallback", [])],
    "weightquant": lambda c: [
        {"algorithm": a, "bits": b}
        for a in c.get("weightquant", {}).get("algorithms", [])
        for b in c.get("weightquant", {}).get("bits", [])
    ],
    "fat": lambda c: [{"scheme": s} for s in c.get("fat", {}).get("schemes", [])],
    "adjustable": lambda c: [{"target": t} for t in (c.get("adjustable", {}).get("targets") or {})],
}


def fat_exportable(scheme: str) -> bool:
    """LiteRT's int8 kernels run 8-bit activations and weights of at most 8 bits."""
    return tflite_exportable(parse_scheme(scheme))


def adjustable_target_exportable(config: dict, target: str) -> bool:
    """The int8 TFLite export holds channels of at most 8 bits."""
    return adjustable_exportable(target_settings(config.get("adjustable", {}), target))


def _weight_only_bits(fields: dict, weightquant: dict | None) -> tuple:
    keep_bias = bool((weightquant or {}).get("keep_bias_float", False))
    bits = fields["bits"]
    return bits, 32, 32 if keep_bias else bits, 32


def _fat_bits(fields: dict, weightquant: dict | None) -> tuple:
    scheme = parse_scheme(fields["scheme"])
    return scheme["weight_bits"], scheme["activation_bits"], 32, 8


@dataclass(frozen=True)
class Family:
    """One kind of variant. `template` names it (`{field}`s from FIELDS); `model` is the
    file it is evaluated from under results/<dataset>/<model>/; `kind` is "reference" (the
    float Keras model), "deployable" (a file LiteRT runs) or "simulation" (fake-quant or
    weight-only weights run in TensorFlow); `timing` is "own", another variant's name
    whose timing it takes, or None (not timed); `bits` is (weight, activation, bias,
    input) bits, a function of (fields, weightquant section) giving them, or None (bits of
    its own); `source` is the SOURCES entry its variants come from, None for the variants
    a config lists by name (`variants:`); `include(fields, config)` drops some of them;
    `int8`: fully integer TFLite (diagnosed per layer); `study`: a calibration study of
    tflite-int8 (its own plot, not the per-layer one); `extras`: files an evaluation
    reads besides the model (input name -> path under results/<dataset>/<model>/)."""

    key: str
    method: str
    template: str
    model: str
    kind: str
    runtime: str
    timing: str | None
    bits: tuple | Callable | None
    source: str | None = None
    include: Callable[[dict, dict], bool] | None = None
    int8: bool = False
    study: bool = False
    extras: dict = field(default_factory=dict)

    @cached_property
    def pattern(self) -> re.Pattern:
        parts = re.split(r"\{(\w+)\}", self.template)
        regex = "".join(
            re.escape(p) if i % 2 == 0 else f"(?P<{p}>{FIELDS[p][0]})"
            for i, p in builtins.enumerate(parts)
        )
        return re.compile(regex)

    def name(self, **fields) -> str:
        return self.template.format(**fields)


PTQ = "post-training quantization"


def _listed(key, template, kind, runtime, bits, int8=False, method=PTQ, fmt=None):
    """A variant a config lists by name (`variants:`): the converter's and
    ai-edge-quantizer's formats, evaluated from tflite/<format>.tflite."""
    return Family(
        key,
        method,
        template,
        f"tflite/{fmt or template[len('tflite-'):]}.tflite",
        kind,
        runtime,
        "own",
        bits,
        int8=int8,
    )


FAMILIES: list[Family] = [
    Family(
        "float",
        "float",
        "keras-float",
        "float/model.keras",
        "reference",
        "TensorFlow",
        "own",
        FLOAT_BITS,
    ),
    _listed("fp32", "tflite-fp32", "deployable", "LiteRT", FLOAT_BITS, method="float"),
    _listed("fp16", "tflite-fp16", "deployable", "LiteRT", (16, 32, 16, 32)),
    _listed("dynamic", "tflite-dynamic", "deployable", "LiteRT", (8, 8, 32, 32)),
    _listed("int8", "tflite-int8", "deployable", "LiteRT", INT8_BITS, int8=True),
    _listed("int16x8", "tflite-int16x8", "deployable", "LiteRT", (8, 16, 32, 32)),
    # ai-edge-quantizer, from tflite-fp32 (the converter has no int4)
    _listed("int4-weights", "tflite-int4-weights", "deployable", "LiteRT", (4, 32, 32, 32)),
    _listed("dynamic-int4", "tflite-dynamic-int4", "deployable", "LiteRT", (4, 8, 32, 32)),
    _listed("static-int4", "tflite-static-int4", "deployable", "LiteRT", (4, 8, 32, 8)),
    # int8 calibration studies: N seeded training images, P percent, one class only
    Family(
        "int8-cal",
        PTQ,
        "tflite-int8-cal{images}",
        "tflite/int8-cal{images}.tflite",
        "deployable",
        "LiteRT",
        "own",
        INT8_BITS,
        "calibration_sizes",
        int8=True,
        study=True,
    ),
    Family(
        "int8-calpct",
        PTQ,
        "tflite-int8-cal{percent}pct",
        "tflite/int8-cal{percent}pct.tflite",
        "deployable",
        "LiteRT",
        "own",
        INT8_BITS,
        "calibration_percents",
        int8=True,
        study=True,
    ),
    Family(
        "int8-class",
        PTQ,
        "tflite-int8-class{label}",
        "tflite/int8-class{label}.tflite",
        "deployable",
        "LiteRT",
        "own",
        INT8_BITS,
        "calibration_classes",
        int8=True,
        study=True,
    ),
    # int8 with the k layers tflite-int8's diagnosis finds worst left in float
    Family(
        "float-fallback",
        PTQ,
        "tflite-int8-float{k}",
        "tflite/int8-float{k}.tflite",
        "deployable",
        "LiteRT",
        "own",
        None,
        "float_fallback",
    ),
    # weight-only: keras-float's graph with quantized weights (its timing)
    Family(
        "weight-only",
        "weight-only",
        "{algorithm}-{bits}",
        "weightquant/{algorithm}_{bits}bits/weights.pickle",
        "simulation",
        "TensorFlow",
        "keras-float",
        _weight_only_bits,
        "weightquant",
    ),
    # its deployable form: fixed-point kernels of at most 8 bits as int8 / INT4 codes
    # behind DEQUANTIZE ops, float compute (bin has no exact one: see weightquant's
    # affine_exact)
    Family(
        "weight-only-tflite",
        "weight-only",
        "fixed-{bits}-tflite",
        "weightquant/fixed_{bits}bits/model.tflite",
        "deployable",
        "LiteRT",
        "own",
        _weight_only_bits,
        "weightquant",
        include=lambda f, c: f["algorithm"] == "fixed" and f["bits"] <= 8,
    ),
    # FAT: the int8 TFLite model, and the fake-quant Keras model (the only one for
    # schemes TFLite cannot run exactly)
    Family(
        "fat",
        "FAT",
        "fat-{scheme}",
        "fat/{scheme}/model.tflite",
        "deployable",
        "LiteRT",
        "own",
        _fat_bits,
        "fat",
        include=lambda f, c: fat_exportable(f["scheme"]),
        int8=True,
    ),
    Family(
        "fat-sim",
        "FAT",
        "fat-{scheme}-sim",
        "fat/{scheme}/model.keras",
        "simulation",
        "TensorFlow",
        None,
        _fat_bits,
        "fat",
        include=lambda f, c: bool(c.get("fat", {}).get("simulate", True))
        or not fat_exportable(f["scheme"]),
    ),
    # adjustable: the simulated mixed-precision model and its int8 TFLite export
    Family(
        "adjq",
        "adjustable",
        "adjq-{target}",
        "adjustable/{target}/model.keras",
        "simulation",
        "TensorFlow",
        None,
        None,
        "adjustable",
        extras={
            "score": "adjustable/{target}/score.json",
            "packed": "adjustable/{target}/weights.packed",
        },
    ),
    Family(
        "adjq-int8",
        "adjustable",
        "adjq-{target}-int8",
        "adjustable/{target}/model.tflite",
        "deployable",
        "LiteRT",
        "own",
        None,
        "adjustable",
        include=lambda f, c: adjustable_target_exportable(c, f["target"]),
        int8=True,
        extras={"score": "adjustable/{target}/score_int8.json"},
    ),
]


def family(key: str) -> Family:
    """The family of a key ("fat", "adjq-int8", ...)."""
    return next(f for f in FAMILIES if f.key == key)


def name(key: str, **fields) -> str:
    """A variant's name from its family key and fields: name("fat", scheme="w8a8-sym-pc")."""
    return family(key).name(**fields)


@dataclass(frozen=True)
class Variant:
    """A parsed variant name: its family and the fields its name holds."""

    name: str
    family: Family
    fields: dict

    @property
    def model_file(self) -> str:
        """The file it is evaluated from, under results/<dataset>/<model>/."""
        return self.family.model.format(**self.fields)

    @property
    def extras(self) -> dict:
        """Files its evaluation reads besides the model, under results/<dataset>/<model>/."""
        return {k: v.format(**self.fields) for k, v in self.family.extras.items()}

    @property
    def deployable(self) -> bool:
        return self.family.kind == "deployable"

    @property
    def simulation(self) -> bool:
        return self.family.kind == "simulation"

    @property
    def timed(self) -> str | None:
        """The variant whose timing it takes: its own, another's, or None."""
        timing = self.family.timing
        return self.name if timing == "own" else timing

    def bits(self, weightquant: dict | None = None) -> dict | None:
        bits = self.family.bits
        if callable(bits):
            bits = bits(self.fields, weightquant)
        return None if bits is None else dict(zip(KEYS, bits))


def parse(variant: str) -> Variant | None:
    """The variant of a name, or None for a name no family has."""
    for fam in FAMILIES:
        match = fam.pattern.fullmatch(variant)
        if match:
            fields = {k: FIELDS[k][1](v) for k, v in match.groupdict().items()}
            return Variant(variant, fam, fields)
    return None


def enumerate(config: dict) -> list[str]:  # noqa: A001 (the registry's verb)
    """Every variant a config evaluates, in order: those `variants:` lists, then each
    source's (calibration studies, float fallback, weight-only, FAT, adjustable), the
    families of one source instance by instance."""
    names = list(config.get("variants", []))
    sources = list(dict.fromkeys(f.source for f in FAMILIES if f.source))
    for source in sources:
        families = [f for f in FAMILIES if f.source == source]
        for fields in SOURCES[source](config):
            names += [
                f.name(**fields) for f in families if f.include is None or f.include(fields, config)
            ]
    return names


def method(variant: str) -> str:
    """The method family the report groups a variant under ("other" for unknown names)."""
    v = parse(variant)
    return v.family.method if v else "other"


def variant_bits(variant: str, weightquant: dict | None = None) -> dict | None:
    """Uniform bit widths of `variant` ({weight_bits, activation_bits, bias_bits,
    input_bits}), or None for a variant with bits of its own or an unknown name."""
    v = parse(variant)
    return v.bits(weightquant) if v else None


def timed_variant(variant: str) -> str | None:
    """The variant whose timing a variant takes: its own; keras-float's for the weight-only
    variants (bin-<bits>, fixed-<bits>), which run its graph with other weight values; none
    for the fake-quant simulations (fat-<scheme>-sim, adjq-<target>), whose TensorFlow time
    says nothing of a deployed model's (their LiteRT exports are timed). An unknown name:
    its own."""
    v = parse(variant)
    return v.timed if v else variant
