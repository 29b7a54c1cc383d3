"""Checks of a config that the JSON schema cannot express, run when the workflow is planned
(before any job), each problem one line naming the key: FAT scheme names read as bits
("weight bits 2..16", not a regular expression), and every adjustable target's settings
(min_bits <= max_bits, bits in range; the section's keys with the target's own on top).
No TensorFlow: the workflow plans with it."""

from __future__ import annotations

import re

from quantflow.quant.adjustable.targets import target_settings

SCHEME = re.compile(r"w(\d+)a(\d+)-(sym|asym)-(pc|pt)")
BITS = (2, 16)


def scheme_problems(config: dict) -> list[str]:
    """fat.schemes: each `w<bits>a<bits>-<sym|asym>-<pc|pt>` with bits 2..16."""
    schemes = (config.get("fat") or {}).get("schemes")
    if not isinstance(schemes, list):
        return []
    problems = []
    for i, name in enumerate(schemes):
        where = f"fat.schemes[{i}]"
        match = SCHEME.fullmatch(name) if isinstance(name, str) else None
        if match is None:
            problems.append(
                f"{where}: {name!r} is not a scheme: write w<weight bits>a<activation bits>-"
                "<sym|asym>-<pc|pt>, e.g. w8a8-sym-pc (bits 2..16)"
            )
            continue
        for what, bits in (("weight bits", match[1]), ("activation bits", match[2])):
            if not BITS[0] <= int(bits) <= BITS[1]:
                problems.append(
                    f"{where}: {name!r} has {what} {int(bits)}; {what} are {BITS[0]}..{BITS[1]}"
                )
    return problems


def adjustable_problems(config: dict) -> list[str]:
    """adjustable: every target's min_bits <= max_bits, weight / activation bits 2..16,
    min / max bits 1..16, as Settings.check would say when the job runs."""
    section = config.get("adjustable") or {}
    targets = section.get("targets") or {}
    problems = []
    for target in targets:
        settings = target_settings(section, target)
        where = f"adjustable (target {target})"
        lo, hi = settings.get("min_bits", 2), settings.get("max_bits", 8)
        if isinstance(lo, int) and isinstance(hi, int):
            if not 1 <= lo <= 16 or not 1 <= hi <= 16:
                problems.append(f"{where}: min_bits {lo}, max_bits {hi}; bits are 1..16")
            elif lo > hi:
                problems.append(
                    f"{where}: min_bits {lo} is above max_bits {hi}; need min_bits <= max_bits"
                )
        for key in ("weight_bits", "activation_bits"):
            bits = settings.get(key)
            if isinstance(bits, int) and not BITS[0] <= bits <= BITS[1]:
                problems.append(f"{where}: {key} {bits}; bits are {BITS[0]}..{BITS[1]}")
    return problems
