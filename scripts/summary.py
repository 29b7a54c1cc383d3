"""summary: aggregate every metrics.json into summary.json and render summary.md
(quantflow.report.summary)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from quantflow.workflow.environment import machine_description, package_versions, run_details
from quantflow.workflow.files import as_dataclass
from quantflow.workflow.logs import run_logged


def main(inp, out, config):
    from quantflow.report.summary import SummaryInputs, SummaryOutputs, summarise

    records = summarise(
        as_dataclass(SummaryInputs, inp),
        as_dataclass(SummaryOutputs, out),
        config,
        versions=package_versions(),
        machine=machine_description(),
        run=run_details(Path(snakemake.scriptdir).parent, dict(config)),
    )
    # the configuration this report was made with: `make report` re-renders with it
    import yaml

    Path(out.run_config).write_text(
        "# the configuration of the run summarised in results/summary.md (make report reads it)\n"
        + yaml.safe_dump(dict(config), sort_keys=False)
    )
    print(f"{len(records)} variants summarised")


run_logged(snakemake.log[0], main, snakemake.input, snakemake.output, snakemake.params.config)
