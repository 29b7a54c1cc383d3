"""Each rule's code digest covers exactly the library code its script runs.

The digest (quantflow.workflow.codedeps) reads a script's imports statically, at any
depth. Checked here: every rule digests its own script; everything a script's imports
load at run time is inside its digest; a module loaded by name (a weight-only algorithm)
is named by its rule; and the stages a job does not run stay out of its digest, so an
edit there reruns nothing of it.
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

from quantflow.workflow.codedeps import code_digest, library_files

SCRIPTS = sorted((REPO / "scripts").glob("*.py"))


def covered(script: str, *modules) -> set[str]:
    files = library_files(REPO / "scripts" / f"{script}.py", REPO, modules)
    return {
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__") for p in files
    }


def rule_scripts() -> dict[str, tuple[str, str]]:
    """rule name -> (script it runs, script its code digest names)."""
    found = {}
    for smk in (REPO / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=rule \w+:)", smk.read_text()):
            head = re.match(r"rule (\w+):", block)
            script = re.search(r'script:\s*\n\s*"\.\./scripts/(\w+)\.py"', block)
            digest = re.search(r'code=(?:lambda \w+: )?code_digest\("(\w+)"', block)
            if head and script:
                found[head.group(1)] = (script.group(1), digest and digest.group(1))
    return found


def test_every_rule_digests_the_script_it_runs():
    rules = rule_scripts()
    assert len(rules) >= 15
    wrong = {rule: pair for rule, pair in rules.items() if pair[0] != pair[1]}
    assert not wrong, f"rules whose code digest names another script (or none): {wrong}"


def loaded_at_run_time(script: Path) -> set[str]:
    """The quantflow modules loaded by executing every quantflow import statement of
    `script` (also those inside its functions)."""
    imports = [
        ast.unparse(n)
        for n in ast.walk(ast.parse(script.read_text()))
        if isinstance(n, (ast.Import, ast.ImportFrom))
        and any("quantflow" in (getattr(n, "module", None) or a.name) for a in n.names)
    ]
    code = "\n".join(
        [
            f"import sys; sys.path.insert(0, {str(REPO)!r})",
            *imports,
            "print('\\n'.join(m for m in sys.modules if m.startswith('quantflow.')))",
        ]
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": ""},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return set(out.stdout.split())


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_what_a_script_loads_is_inside_its_digest(script):
    missing = loaded_at_run_time(script) - covered(script.stem)
    assert not missing, f"{script.name} loads modules its digest misses: {sorted(missing)}"


def test_a_weight_only_job_covers_its_own_algorithm_only():
    base = covered("weightquant")
    assert not {"quantflow.quant.weightonly.bin", "quantflow.quant.weightonly.fixed"} & base
    assert "quantflow.quant.weightonly.fixed" in covered(
        "weightquant", "quantflow.quant.weightonly.fixed"
    )
    assert "quantflow.quant.weightonly.bin" not in covered(
        "weightquant", "quantflow.quant.weightonly.fixed"
    )
    bin_digest = code_digest(
        REPO / "scripts/weightquant.py", REPO, ["quantflow.quant.weightonly.bin"]
    )
    fixed_digest = code_digest(
        REPO / "scripts/weightquant.py", REPO, ["quantflow.quant.weightonly.fixed"]
    )
    assert bin_digest != fixed_digest
    with pytest.raises(ValueError, match="no such module"):
        library_files(REPO / "scripts/weightquant.py", REPO, ["quantflow.quant.weightonly.nope"])


# stages a job must not reach: an edit there must not rerun it
NOT_REACHED = {
    "evaluate": [
        "quantflow.quant.fat.train",
        "quantflow.quant.weightonly.fixed",
        "quantflow.quant.weightonly.bin",
        "quantflow.quant.adjustable.train",
        "quantflow.data.download",
        "quantflow.data.sources",
        "quantflow.report",
    ],
    "latency": [
        "quantflow.quant.fat.train",
        "quantflow.quant.weightonly.fixed",
        "quantflow.data.download",
        "quantflow.report",
    ],
    "tflite": [
        "quantflow.quant.fat.train",
        "quantflow.quant.weightonly.apply",
        "quantflow.evaluate.runners",
        "quantflow.data.download",
    ],
    "diagnose": ["quantflow.quant.fat.train", "quantflow.quant.weightonly.apply"],
    "fat_tflite": ["quantflow.quant.fat.train"],
    "adjustable": ["quantflow.quant.fat.train"],
    "summary": [
        "quantflow.quant.fat.train",
        "quantflow.quant.weightonly.fixed",
        "quantflow.quant.adjustable.train",
        "quantflow.deploy.convert",
    ],
    "train": ["quantflow.quant", "quantflow.deploy", "quantflow.data.download"],
    "prepare": ["quantflow.data.download", "quantflow.data.sources", "quantflow.models"],
}


@pytest.mark.parametrize("script", sorted(NOT_REACHED))
def test_a_job_does_not_reach_the_stages_it_does_not_run(script):
    reached = covered(script)
    wrong = [
        m for m in NOT_REACHED[script] if any(r == m or r.startswith(m + ".") for r in reached)
    ]
    assert not wrong, f"scripts/{script}.py reaches {wrong}"


def test_the_fat_job_reaches_fat_training():
    assert "quantflow.quant.fat.train" in covered("fat")
