"""The project's own promises: pinned environments agree, the workflow and the Python sources
lint clean."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

BIN = Path(sys.executable).parent


def pins(lines):
    """name -> version of every `name==version` line, names normalised as PyPI does."""
    return {
        re.sub(r"[-_.]+", "-", line.split("==")[0]).lower(): line.split("==")[1]
        for line in (raw.split("#")[0].strip() for raw in lines)
        if "==" in line
    }


def test_conda_env_pins_match_requirements():
    required = pins((REPO / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((REPO / "envs/quantflow.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pins(pip_section) == required
    assert "python=3.11" in env["dependencies"]


def test_requirements_agree_with_constraints():
    constraints = pins((REPO / "constraints.txt").read_text().splitlines())
    for name, version in pins((REPO / "requirements.txt").read_text().splitlines()).items():
        assert constraints.get(name) == version, name


def test_snakemake_lint_is_clean():
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--lint", "--cores", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Lints for" not in out, out


def test_snakefmt_clean():
    proc = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "Snakefile", "rules"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("tool", [["ruff", "check"], ["black", "--check"]])
def test_python_sources_lint_clean(tool):
    """ruff (pyflakes, pycodestyle) and black, configured in pyproject.toml: `make lint`."""
    proc = subprocess.run(
        [str(BIN / tool[0]), *tool[1:], "quantflow", "scripts", "tests", "benchmarks"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ready_configs_validate_against_the_schema():
    from snakemake.utils import update_config, validate

    for path in sorted((REPO / "configs").glob("*.yaml")):
        config = yaml.safe_load((REPO / "config.yaml").read_text())
        update_config(config, yaml.safe_load(path.read_text()))
        validate(config, str(REPO / "rules/config.schema.yaml"))
        assert config["train"]["stages"][0]["schedule"], path  # defaults filled in


def test_readme_images_are_committed_small_pngs():
    readme = (REPO / "README.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert "docs/report.png" in images
    for image in images:
        data = (REPO / image).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 200_000, image
