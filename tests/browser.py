"""Headless Chromium (Debian's `chromium`) for the tests of the HTML report: the DOM as the
browser built it (scripts run: Snakemake's report is a React page) and a screenshot.
Without a browser the tests skip, unless QUANTFLOW_REQUIRE_BROWSER=1 (CI installs one)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--allow-file-access-from-files",
    "--disable-dev-shm-usage",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    message = "no headless Chromium (Debian: apt-get install chromium; make test does it)"
    if os.environ.get("QUANTFLOW_REQUIRE_BROWSER") == "1":
        pytest.fail(f"QUANTFLOW_REQUIRE_BROWSER=1 but {message}")
    pytest.skip(message)


def _run(url: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                chromium(),
                *FLAGS,
                f"--user-data-dir={profile}",
                "--virtual-time-budget=15000",
                *args,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def dump_dom(path: str | Path) -> str:
    """The page's DOM after its scripts ran, as HTML."""
    return _run(Path(path).resolve().as_uri(), "--dump-dom").stdout


def screenshot(
    path: str | Path, png: str | Path, width: int = 1400, height: int = 2400
) -> np.ndarray:
    """A screenshot of the page (RGB array, height x width x 3)."""
    from matplotlib.image import imread

    _run(
        Path(path).resolve().as_uri(),
        f"--window-size={width},{height}",
        f"--screenshot={Path(png).resolve()}",
    )
    return imread(png)[..., :3]


def coloured_share(pixels: np.ndarray) -> float:
    """The share of clearly coloured pixels (saturation above 0.4, not near black or
    white): the report's text and tables are grey, its plots' markers and lines are not,
    so a page whose figures failed to load has almost none."""
    top, bottom = pixels.max(axis=-1), pixels.min(axis=-1)
    saturation = (top - bottom) / np.maximum(top, 1e-6)
    return float(np.mean((saturation > 0.4) & (top > 0.2)))
