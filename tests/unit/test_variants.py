"""quantflow.variants: the one table of variant families, against names written out by hand
from the default config and the schema."""

import pytest
import yaml

from conftest import REPO
from quantflow import variants
from quantflow.variants import FAMILIES, enumerate as enumerate_variants, parse


def default_config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_the_default_config_evaluates_these_variants_in_this_order():
    assert enumerate_variants(default_config()) == [
        "keras-float",
        "tflite-fp32",
        "tflite-fp16",
        "tflite-dynamic",
        "tflite-int8",
        "tflite-int16x8",
        "tflite-int4-weights",
        "tflite-dynamic-int4",
        "tflite-static-int4",
        "tflite-int8-cal10",
        "tflite-int8-cal100",
        "tflite-int8-cal1000",
        "tflite-int8-cal5000",
        "tflite-int8-class0",
        "tflite-int8-float1",
        "tflite-int8-float2",
        "bin-2",
        "bin-4",
        "bin-6",
        "bin-8",
        "bin-16",
        "fixed-2",
        "fixed-2-tflite",
        "fixed-4",
        "fixed-4-tflite",
        "fixed-6",
        "fixed-6-tflite",
        "fixed-8",
        "fixed-8-tflite",
        "fixed-16",
        "fat-w8a8-sym-pc",
        "fat-w8a8-sym-pc-sim",
        "fat-w4a8-sym-pc",
        "fat-w4a8-sym-pc-sim",
        "adjq-s24",
        "adjq-s24-int8",
    ]


@pytest.mark.parametrize(
    "name, file, method, kind, timed",
    [
        ("keras-float", "float/model.keras", "float", "reference", "keras-float"),
        ("tflite-fp32", "tflite/fp32.tflite", "float", "deployable", "tflite-fp32"),
        (
            "tflite-dynamic-int4",
            "tflite/dynamic-int4.tflite",
            "post-training quantization",
            "deployable",
            "tflite-dynamic-int4",
        ),
        (
            "tflite-int8-cal25pct",
            "tflite/int8-cal25pct.tflite",
            "post-training quantization",
            "deployable",
            "tflite-int8-cal25pct",
        ),
        (
            "tflite-int8-class3",
            "tflite/int8-class3.tflite",
            "post-training quantization",
            "deployable",
            "tflite-int8-class3",
        ),
        (
            "tflite-int8-float2",
            "tflite/int8-float2.tflite",
            "post-training quantization",
            "deployable",
            "tflite-int8-float2",
        ),
        (
            "fixed-16",
            "weightquant/fixed_16bits/weights.pickle",
            "weight-only",
            "simulation",
            "keras-float",
        ),
        (
            "fixed-8-tflite",
            "weightquant/fixed_8bits/model.tflite",
            "weight-only",
            "deployable",
            "fixed-8-tflite",
        ),
        (
            "fat-w4a8-asym-pt",
            "fat/w4a8-asym-pt/model.tflite",
            "FAT",
            "deployable",
            "fat-w4a8-asym-pt",
        ),
        ("fat-w4a8-asym-pt-sim", "fat/w4a8-asym-pt/model.keras", "FAT", "simulation", None),
        ("adjq-s24", "adjustable/s24/model.keras", "adjustable", "simulation", None),
        (
            "adjq-s24-int8",
            "adjustable/s24/model.tflite",
            "adjustable",
            "deployable",
            "adjq-s24-int8",
        ),
    ],
)
def test_a_name_gives_its_file_method_kind_and_timing(name, file, method, kind, timed):
    v = parse(name)
    assert (v.model_file, v.family.method, v.family.kind, v.timed) == (file, method, kind, timed)
    assert v.deployable == (kind == "deployable") and v.simulation == (kind == "simulation")
    assert variants.method(name) == method and variants.timed_variant(name) == timed


def test_every_name_belongs_to_one_family_and_is_written_back_the_same():
    config = default_config()
    config["tflite"]["calibration_percents"] = [5]
    config["fat"]["schemes"] += ["w4a4-asym-pt"]
    config["adjustable"]["targets"]["wide"] = {"max_bits": 10}
    names = enumerate_variants(config)
    assert len(names) == len(set(names))
    for name in names:
        matching = [f for f in FAMILIES if f.pattern.fullmatch(name)]
        assert len(matching) == 1, (name, [f.key for f in matching])
        v = parse(name)
        assert v.family.name(**v.fields) == name


def test_the_extras_are_the_adjustable_scores():
    assert parse("adjq-t1").extras == {
        "score": "adjustable/t1/score.json",
        "packed": "adjustable/t1/weights.packed",
    }
    assert parse("adjq-t1-int8").extras == {"score": "adjustable/t1/score_int8.json"}
    assert parse("fat-w8a8-sym-pc").extras == {}


def test_bits_as_the_score_counts_them():
    bits = variants.variant_bits
    assert (
        bits("keras-float")
        == bits("tflite-fp32")
        == {"weight_bits": 32, "activation_bits": 32, "bias_bits": 32, "input_bits": 32}
    )
    assert bits("tflite-int8-cal10") == {
        "weight_bits": 8,
        "activation_bits": 8,
        "bias_bits": 32,
        "input_bits": 8,
    }
    assert bits("tflite-fp16")["bias_bits"] == 16
    assert bits("tflite-int16x8")["activation_bits"] == 16
    assert bits("bin-4") == {
        "weight_bits": 4,
        "activation_bits": 32,
        "bias_bits": 4,
        "input_bits": 32,
    }
    assert bits("bin-4", {"keep_bias_float": True})["bias_bits"] == 32
    assert bits("fat-w4a8-sym-pc-sim") == {
        "weight_bits": 4,
        "activation_bits": 8,
        "bias_bits": 32,
        "input_bits": 8,
    }
    assert bits("adjq-s24") is None and bits("tflite-int8-float1") is None
    assert bits("no-such-variant") is None


def test_which_fat_and_adjustable_variants_a_config_has():
    config = {
        "variants": ["tflite-fp32"],
        "fat": {"schemes": ["w8a8-sym-pc", "w4a4-asym-pt"], "simulate": False},
        "adjustable": {"max_bits": 8, "targets": {"a": None, "b": {"max_bits": 12}}},
    }
    # LiteRT cannot run 4-bit activations: that scheme is a simulation only
    assert enumerate_variants(config) == [
        "tflite-fp32",
        "fat-w8a8-sym-pc",
        "fat-w4a4-asym-pt-sim",
        "adjq-a",
        "adjq-a-int8",
        "adjq-b",
    ]
    config["adjustable"]["max_bits"] = 10  # the section's setting, unless a target's own
    config["adjustable"]["targets"]["b"] = {"max_bits": 6}
    assert enumerate_variants(config)[-3:] == ["adjq-a", "adjq-b", "adjq-b-int8"]


def test_unknown_names():
    assert parse("tflite-int9") is None and parse("fat-w8a8-sym") is None
    assert variants.method("something-else") == "other"
    assert variants.timed_variant("something-else") == "something-else"


def test_the_schema_allows_exactly_the_families_a_config_lists_by_name():
    schema = yaml.safe_load((REPO / "rules/config.schema.yaml").read_text())
    allowed = schema["properties"]["variants"]["items"]["enum"]
    assert sorted(allowed) == sorted(f.template for f in FAMILIES if f.source is None)


def test_name_builds_a_family_name():
    assert variants.name("fat-sim", scheme="w8a8-sym-pc") == "fat-w8a8-sym-pc-sim"
    assert variants.name("weight-only", algorithm="bin", bits=4) == "bin-4"
