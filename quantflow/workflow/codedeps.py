"""Which library code a workflow step can run, and one digest of it.

Snakemake reruns a job when its script changes, but it does not see the library modules
the script imports. The workflow gives every rule a `code` parameter: a digest of its
script and of every ``quantflow`` module the script imports, directly or through other
modules (found by reading their ``import`` statements, at any depth and inside functions
too). Editing a module changes the digest of exactly the rules that can run it, and
Snakemake reruns their jobs ("Params have changed"); other jobs stay as they are.

The reading is conservative (an import inside a function that a job may never call still
counts) and static: a module loaded only through importlib with a computed name is not
seen, so library code imports library modules with import statements.

Pure Python (ast, hashlib): planning a workflow imports no TensorFlow.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = "quantflow"


def _module_file(root: Path, dotted: str) -> Path | None:
    """The file of module `dotted` (a package's __init__.py) under `root`, if any."""
    base = root.joinpath(*dotted.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _package_of(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    else:
        parts.pop()  # a module's package is its folder
    return ".".join(parts)


def _imports(root: Path, path: Path) -> set[str]:
    """Dotted names of the `quantflow` modules (and their packages) that `path` imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y, from . import y
                if path.is_relative_to(root / PACKAGE):
                    base = _package_of(root, path).split(".")
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    continue
            else:
                module = node.module or ""
            names.add(module)
            # `from quantflow import data` names a submodule, not an attribute
            names.update(f"{module}.{alias.name}" for alias in node.names)
    found = set()
    for name in names:
        if name != PACKAGE and not name.startswith(PACKAGE + "."):
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # the package's __init__ runs too
            if _module_file(root, ".".join(parts[:i])):
                found.add(".".join(parts[:i]))
    return found


def library_files(script: str | Path, root: str | Path, modules=()) -> list[Path]:
    """The `quantflow` module files under `root` that `script` can import, transitively,
    and those of `modules` (dotted names the script loads by name, e.g. a weight-only
    algorithm's module), sorted by path."""
    root = Path(root).resolve()
    seen: dict[str, Path] = {}
    todo = sorted(_imports(root, Path(script).resolve()))
    for name in modules:
        if _module_file(root, name) is None:
            raise ValueError(f"{name}: no such module under {root}")
        parts = name.split(".")
        todo += [
            ".".join(parts[:i])
            for i in range(1, len(parts) + 1)
            if _module_file(root, ".".join(parts[:i]))
        ]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = _module_file(root, name)
        todo.extend(sorted(_imports(root, seen[name]) - seen.keys()))
    return sorted(set(seen.values()))


@lru_cache(maxsize=None)
def _digest(script: str, root: str, modules: tuple) -> str:
    rootp = Path(root).resolve()
    h = hashlib.sha256()
    for path in [Path(script).resolve(), *library_files(script, root, modules)]:
        name = path.relative_to(rootp).as_posix() if path.is_relative_to(rootp) else path.name
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def code_digest(script: str | Path, root: str | Path, modules=()) -> str:
    """A short SHA-256 of `script` and of every library module it can import, and of
    `modules` with theirs (their paths and contents): equal exactly when none of that code
    changed."""
    return _digest(str(script), str(root), tuple(modules))
