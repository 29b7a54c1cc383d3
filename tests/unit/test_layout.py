"""The library's layout holds: imports go one way between the stage packages, the workflow
package is for scripts only, and no module imports another in a cycle.

    errors, metrics -> formats -> data -> distribute -> models -> quant -> deploy -> variants -> evaluate -> report

A module may import its own package and the packages before it, never one after it: a
job's code digest (quantflow.workflow.codedeps) then covers only the stages it runs. The
imports are read from the source (ast), at any depth, as the digest reads them.
"""

import ast
from pathlib import Path

import pytest

from conftest import REPO

LAYERS = (
    "errors",
    "metrics",
    "formats",
    "data",
    "distribute",
    "models",
    "quant",
    "deploy",
    "variants",
    "evaluate",
    "report",
)
LIBRARY = REPO / "quantflow"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def quantflow_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.startswith("quantflow.")}


def stage(module: str) -> str | None:
    """The stage package (or top-level module) a dotted quantflow name belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


MODULES = sorted(LIBRARY.rglob("*.py"))


def test_every_module_sits_in_a_known_stage():
    stray = [
        module_name(p) for p in MODULES if stage(module_name(p)) not in (*LAYERS, "workflow", None)
    ]
    assert not stray, f"modules outside the stage packages: {stray}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_go_one_way(path):
    own = stage(module_name(path))
    if own is None:  # quantflow/__init__.py
        return
    wrong = []
    for name in quantflow_imports(path):
        target = stage(name)
        if target == "workflow" and own != "workflow":
            wrong.append(f"{name} (quantflow.workflow is for scripts only)")
        elif own == "workflow":
            if target not in ("workflow", "errors"):
                wrong.append(f"{name} (quantflow.workflow imports no stage)")
        elif target in LAYERS and LAYERS.index(target) > LAYERS.index(own):
            wrong.append(f"{name} ({target} comes after {own})")
    assert not wrong, f"{module_name(path)} imports against the layering: {wrong}"


def test_no_import_cycles():
    graph = {}
    for path in MODULES:
        mod = module_name(path)
        targets = set()
        for name in quantflow_imports(path):
            while name and not (
                (LIBRARY.parent / (name.replace(".", "/") + ".py")).is_file()
                or (LIBRARY.parent / name.replace(".", "/") / "__init__.py").is_file()
            ):
                name = name.rpartition(".")[0]
            if name and name != mod and not mod.startswith(name + "."):
                targets.add(name)
        graph[mod] = targets
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, f"import cycles: {cycles}"


def test_scripts_import_the_library_not_each_other():
    for script in (REPO / "scripts").glob("*.py"):
        for name in quantflow_imports(script):
            assert not name.startswith("scripts"), script


def test_public_functions_and_classes_say_what_they_take_and_give():
    """Every public module-level function and class of the library has a docstring."""
    missing = []
    for path in sorted(LIBRARY.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            public = isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name[0] != "_"
            if public and not ast.get_docstring(node):
                missing.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not missing, "no docstring: " + ", ".join(missing)
