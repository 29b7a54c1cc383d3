"""The adjustable targets a config names and what each trains with, as plain dicts (no
TensorFlow or NumPy: the workflow plans with it; `Settings` makes the dataclass)."""

from __future__ import annotations

# keys of the `adjustable:` section that are not a target's settings
SECTION_ONLY = ("targets", "init_from_fat", "threads", "check_images")
DEFAULT_MAX_BITS = 8  # Settings.max_bits
EXPORT_MAX_BITS = 8  # the int8 TFLite export holds channels of at most 8 bits


def target_settings(section: dict, target: str) -> dict:
    """A target's settings: the section's, overridden by the target's own (the rest take
    `Settings`' defaults)."""
    settings = {k: v for k, v in section.items() if k not in SECTION_ONLY}
    settings.update((section.get("targets") or {}).get(target) or {})
    return settings


def exportable(settings: dict) -> bool:
    """Whether a target's channels fit the int8 TFLite export (max_bits <= 8)."""
    return settings.get("max_bits", DEFAULT_MAX_BITS) <= EXPORT_MAX_BITS


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
            if isinstance(bits, int) and not 2 <= bits <= 16:
                problems.append(f"{where}: {key} {bits}; bits are {2}..{16}")
    return problems
