import os
from pathlib import Path

import pytest
import yaml

from .slurm import SlurmCluster, SlurmUnavailable

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "profiles/slurm"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "cluster: starts a real single-node SLURM (slurmctld, slurmd, munged) and "
        "runs the workflow through it; skipped where SLURM is not installed or not root",
    )


def profile_max_mem_mb(profile=PROFILE) -> int:
    """The largest mem_mb the profile gives any job (a node must offer at least that)."""
    cfg = yaml.safe_load((profile / "config.yaml").read_text())
    values = [cfg.get("default-resources", {}).get("mem_mb", 0)]
    values += [r.get("mem_mb", 0) for r in cfg.get("set-resources", {}).values()]
    return max(int(v) for v in values)


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running single-node SLURM cluster; skipped, with the reason, where it cannot run
    (QUANTFLOW_REQUIRE_SLURM=1 makes that a failure, for machines that must have it)."""
    try:
        # two CPUs at least: the tiny config trains with 2 threads, as it does locally
        cluster = SlurmCluster(memory_mb=profile_max_mem_mb(), cpus=max(2, os.cpu_count() or 1))
        cluster.start()
    except SlurmUnavailable as e:
        if os.environ.get("QUANTFLOW_REQUIRE_SLURM") == "1":
            pytest.fail(f"SLURM test cluster required (QUANTFLOW_REQUIRE_SLURM=1) but: {e}")
        pytest.skip(f"no SLURM test cluster: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()
