import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# what a copy of the workflow needs to run (and the configs the docs name)
WORKFLOW_PARTS = (
    "Snakefile",
    "config.yaml",
    "configs",
    "tests/configs",
    "rules",
    "scripts",
    "quantflow",
    "reports",
    "envs",
    "profiles",
)


def copy_workflow(dest: Path) -> Path:
    """A copy of the workflow under `dest` (its library code can be edited there)."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / part)
    return dest


def snakemake_cmd(workdir, configfile, *args):
    """The real `snakemake` command of this environment, on the repository's Snakefile,
    working in `workdir` with `configfile`."""
    exe = Path(sys.executable).with_name("snakemake")
    return [
        str(exe),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        *args,
    ]


def run_snakemake(workdir, configfile, *args, check=True, timeout=900):
    proc = subprocess.run(
        snakemake_cmd(workdir, configfile, *args), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        logs = "\n".join(
            f"--- {p}\n{p.read_text()[-3000:]}" for p in Path(workdir).glob("logs/**/*.log")
        )
        pytest.fail(
            f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}\n{logs}"
        )
    return proc


@pytest.fixture(scope="session")
def fashion_mnist_dir():
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(
            "Fashion-MNIST not installed: `apt-get install dataset-fashion-mnist` (make test does it where apt is usable)"
        )
    return FASHION_MNIST_DIR


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Keep a proxy from the environment away from the local test servers (127.0.0.1)."""
    for name in (
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)


def free_ports(n: int) -> list[int]:
    """`n` TCP ports free on 127.0.0.1 just now (for TensorFlow workers a test starts)."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
