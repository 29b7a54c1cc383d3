"""quantflow.workflow.environment: what the report says of the machine and the run."""

import subprocess

from conftest import REPO
from quantflow.workflow.environment import (
    EXTENSIONS,
    machine_description,
    package_versions,
    run_details,
)


def test_run_details_name_the_commit_or_say_there_is_none(tmp_path):
    details = run_details(REPO, {"a": 1})
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
        capture_output=True,
        text=True,
    )
    if head.returncode == 0:
        assert details["revision"].startswith(head.stdout.strip())
    else:
        assert details["revision"] == "not a git checkout"
    assert run_details(tmp_path, {"a": 1})["revision"] == "not a git checkout"
    assert details["date"].endswith("UTC")
    # the digest follows the configuration, not its key order
    assert (
        run_details(tmp_path, {"a": 1, "b": 2})["config_digest"]
        == run_details(tmp_path, {"b": 2, "a": 1})["config_digest"]
    )
    assert run_details(tmp_path, {"a": 2})["config_digest"] != details["config_digest"]


def test_machine_and_packages():
    machine = machine_description()
    assert machine["logical_cpus"] >= 1 and set(machine["extensions"]) <= set(EXTENSIONS)
    versions = package_versions()
    assert "numpy" in versions and "ai-edge-quantizer" in versions
