"""The machine and software a run used, as the report states them."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_description() -> dict:
    """This machine for the report: cpu model, logical CPUs, platform, Python version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def package_versions(
    names=(
        "tensorflow",
        "tensorflow-cpu",
        "keras",
        "ai-edge-litert",
        "numpy",
        "snakemake",
        "opencv-python-headless",
        "jinja2",
        "matplotlib",
    )
) -> dict:
    """Installed versions of the packages that decide the numbers (absent ones left out)."""
    from importlib import metadata

    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found
