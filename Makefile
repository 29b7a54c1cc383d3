# quantflow: two commands on a fresh machine.
#   make run    install (venv + Debian's Fashion-MNIST where apt is usable) and run the default pipeline
#   make test   install the test tools (SLURM and Chromium where apt is usable) and run the tests

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
# Your settings on top of config.yaml: make run CONFIG=my.yaml, make report CONFIG=my.yaml
CONFIG ?=
SNAKEMAKE_CONFIG := $(if $(CONFIG),--configfile $(CONFIG))

.PHONY: run test test-slow install install-dev data slurm browser report dry-run lint format bench clean

run: install data
	$(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_CONFIG)

test: install-dev data slurm browser
	$(BIN)/pytest -q

test-slow: install-dev
	$(BIN)/pytest -q -m slow

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

$(VENV)/.runtime: requirements.txt constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -c constraints.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt requirements-nodeps.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt -c constraints.txt
	# Keras 2 (tf_keras), only to write true Keras 2 .h5 files in tests; --no-deps: it
	# names the `tensorflow` package, which tensorflow-cpu already provides
	$(BIN)/pip install --quiet --no-deps $$(grep -v '^#' requirements-nodeps.txt)
	touch $@

# Fashion-MNIST ships in Debian (dataset-fashion-mnist). Without apt, the download rule
# falls back to the HTTPS mirrors in config.yaml.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then \
		echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "note: cannot install dataset-fashion-mnist (no root apt); the download rule will use the HTTPS mirrors"; \
	fi

# SLURM and munge for tests/cluster (a real single-node scheduler); skipped there without them.
slurm:
	@if command -v slurmctld >/dev/null 2>&1 || [ -x /usr/sbin/slurmctld ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends slurmctld slurmd slurm-client munge; \
	else \
		echo "note: SLURM not installed (no root apt); tests/cluster will be skipped"; \
	fi

# Headless Chromium (Debian's package) for tests/workflow/test_workflow.py's browser checks of the
# HTML report; skipped there without it.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends chromium; \
	else \
		echo "note: Chromium not installed (no root apt); the browser checks will be skipped"; \
	fi

# Re-render results/summary.{json,md,html} from the existing metrics (nothing else reruns);
# after a run with your own config file: make report CONFIG=my.yaml
# the report alone, with the configuration of the run it summarises (results/run_config.yaml,
# written by the summary job) unless CONFIG= names one; no other rule may run
REPORT_CONFIG = $(if $(CONFIG),--configfile $(CONFIG),$(if $(wildcard results/run_config.yaml),--configfile results/run_config.yaml))
report: install
	$(BIN)/snakemake --cores 1 --allowed-rules summary --forcerun summary $(REPORT_CONFIG) -- results/summary.md

dry-run: install
	$(BIN)/snakemake -n $(SNAKEMAKE_CONFIG)

PYTHON_SOURCES = quantflow scripts tests benchmarks

lint: install-dev
	$(BIN)/ruff check $(PYTHON_SOURCES)
	$(BIN)/black --check $(PYTHON_SOURCES)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules

format: install-dev
	$(BIN)/black $(PYTHON_SOURCES)
	$(BIN)/snakefmt Snakefile rules

bench: install data
	$(BIN)/python benchmarks/pipeline.py

clean:
	rm -rf results logs .snakemake
