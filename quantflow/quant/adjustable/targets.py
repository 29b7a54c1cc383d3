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
