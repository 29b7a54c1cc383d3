"""The machine and software a run used, as the report states them."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

# the vector extensions that decide which int8 / int4 kernels run fast
EXTENSIONS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def machine_description() -> dict:
    """This machine for the report: cpu model, logical CPUs, its vector extensions (of
    EXTENSIONS), platform, Python version."""
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == (
                platform.processor() or platform.machine()
            ):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "extensions": [e for e in EXTENSIONS if e in flags],
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def run_details(repo: str | Path, config: dict) -> dict:
    """What the report says of the run itself: the source revision ("<commit>", with
    " + local changes" when tracked files differ, or "not a git checkout"), the date
    (UTC) and a digest of the configuration."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no")
        revision = git("rev-parse", "--short=12", "HEAD") + (" + local changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        revision = "not a git checkout"
    text = json.dumps(config, sort_keys=True, default=str)
    return {
        "revision": revision,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "config_digest": hashlib.sha256(text.encode()).hexdigest()[:16],
    }


def package_versions(
    names=(
        "tensorflow",
        "tensorflow-cpu",
        "keras",
        "ai-edge-litert",
        "ai-edge-quantizer",
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
