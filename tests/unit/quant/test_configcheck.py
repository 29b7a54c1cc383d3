"""What the config schema cannot say, in words: quantflow.quant.schemes.scheme_problems and
quantflow.quant.adjustable.targets.adjustable_problems (run when the workflow is planned)."""

from quantflow.quant.adjustable.targets import adjustable_problems
from quantflow.quant.schemes import scheme_problems


def test_scheme_bits_in_words():
    assert scheme_problems({"fat": {"schemes": ["w8a8-sym-pc", "w4a8-asym-pt"]}}) == []
    assert scheme_problems({"fat": {"schemes": ["w17a8-sym-pc"]}}) == [
        "fat.schemes[0]: 'w17a8-sym-pc' has weight bits 17; weight bits are 2..16"
    ]
    (bad,) = scheme_problems({"fat": {"schemes": ["w-4a8-sym-pc"]}})
    assert "is not a scheme" in bad and "bits 2..16" in bad and "e.g. w8a8-sym-pc" in bad
    assert scheme_problems({}) == []


def test_adjustable_bounds_per_target():
    section = {"min_bits": 2, "max_bits": 8, "targets": {"a": {}, "b": {"min_bits": 9}}}
    assert adjustable_problems({"adjustable": section}) == [
        "adjustable (target b): min_bits 9 is above max_bits 8; need min_bits <= max_bits"
    ]
    section = {"targets": {"c": {"weight_bits": 1, "max_bits": 20}}}
    assert adjustable_problems({"adjustable": section}) == [
        "adjustable (target c): min_bits 2, max_bits 20; bits are 1..16",
        "adjustable (target c): weight_bits 1; bits are 2..16",
    ]
    assert adjustable_problems({"adjustable": {"targets": None}}) == []
