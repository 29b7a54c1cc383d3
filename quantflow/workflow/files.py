"""A job's named files as the library's dataclasses (used by scripts only)."""

from __future__ import annotations

from dataclasses import fields


def as_dataclass(cls, named):
    """An instance of dataclass `cls` from an object with its fields as attributes (a
    rule's snakemake.input or snakemake.output); a field the object lacks takes its
    default (an optional input)."""
    values = {}
    for f in fields(cls):
        if hasattr(named, f.name):
            values[f.name] = getattr(named, f.name)
    return cls(**values)
