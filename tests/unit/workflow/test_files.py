"""quantflow.workflow.files.as_dataclass: a job's named files as the library's dataclasses."""

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from quantflow.workflow.files import as_dataclass


@dataclass
class Files:
    model: str
    info: str
    extra: str | None = None


def test_named_files_fill_the_fields_and_optional_ones_default():
    named = SimpleNamespace(model="m.keras", info="info.json", unrelated="x")
    assert as_dataclass(Files, named) == Files("m.keras", "info.json")
    named.extra = "t.pickle"
    assert as_dataclass(Files, named).extra == "t.pickle"


def test_a_missing_required_file_is_an_error():
    with pytest.raises(TypeError):
        as_dataclass(Files, SimpleNamespace(model="m.keras"))
