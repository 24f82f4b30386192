# Single entry point. `make run` starts everything for a demo; `make test` checks everything.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KAFKA := dev/kafka/kafka.sh
# the scoring kernel (engagement_index._kernel): a change to its Rust sources rebuilds it
KERNEL_SOURCES := rust/Cargo.toml $(wildcard rust/Cargo.lock rust/src/*.rs)

.DEFAULT_GOAL := help
.PHONY: help setup test lint typecheck unit integration reliability soak run bench bench-segments bench-merge kafka-start kafka-stop kafka-status lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt $(KERNEL_SOURCES)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) (3.11+) is required" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: Python 3.11+ is required" >&2; exit 1; }
	@command -v cargo >/dev/null || { echo "error: cargo (Rust) is required to build the scoring kernel" >&2; exit 1; }
	@echo "setup: creating $(VENV) and installing pinned dependencies"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

setup: $(STAMP) ## create the virtual environment, fetch the Kafka jars and the checking tools
	@$(KAFKA) fetch
	@if [ -x dev/tools/install.sh ]; then dev/tools/install.sh; fi

lint: $(STAMP) ## ruff check + ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP) ## mypy (strict on the pure core)
	$(BIN)/mypy

unit: $(STAMP) ## unit and property tests only (no broker)
	$(BIN)/pytest tests/unit tests/property

test: setup lint typecheck ## everything: lint, types, unit, property and integration tests on a real broker
	$(BIN)/pytest

integration: setup ## integration tests only
	$(BIN)/pytest tests/integration

reliability: setup ## fault, poison-pill and fuzz suites at full size (figures in var/reliability/*.json)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,fuzz]'
	RELIABILITY_SIZE=full $(BIN)/pytest tests/reliability -s $(ARGS)
	$(BIN)/python -m tests.reliability.fuzz $(FUZZ_ARGS)

soak: setup ## 30 min at 50% of the measured peak: worker RSS and lag (ARGS="--minutes n"; var/reliability/soak.json)
	$(BIN)/python -m tests.reliability.soak $(ARGS)

run: setup ## start a local broker, the worker and demo traffic (Ctrl-C stops; MODEL=journey: the journey model)
	@MODEL="$(MODEL)" dev/run-demo.sh

bench: setup ## benchmarks, not part of test (EVENTS=n, ARGS="--contacts n --latency-seconds s ...")
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python bench/run.py $(if $(EVENTS),--events $(EVENTS)) $(ARGS)

bench-segments: setup ## segment lists and summary on 1,000,000 contacts, two workers (ARGS="--contacts n ...")
	$(BIN)/python bench/segments.py $(ARGS)

bench-merge: setup ## identity merge: records and CPU per merge, latency on a broker (ARGS="--merges n --no-broker")
	$(BIN)/python bench/merge.py $(ARGS)

kafka-start: ## start the local single-node broker (idempotent)
	@$(KAFKA) start
kafka-stop: ## stop the local broker
	@$(KAFKA) stop
kafka-status: ## is the local broker running?
	@$(KAFKA) status

lock: ## re-resolve dependencies and rewrite constraints.txt
	rm -rf .cache/lock-venv && $(PYTHON) -m venv .cache/lock-venv
	.cache/lock-venv/bin/pip install --quiet -e '.[dev,bench,fuzz]'
	{ echo '# Exact versions installed by `make` (pip install -c constraints.txt). Regenerate with `make lock`.'; \
	  .cache/lock-venv/bin/pip freeze --exclude-editable; } > constraints.txt

clean: ## remove the virtual environment, caches and local broker state (keeps the Kafka jars)
	-$(KAFKA) stop
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache .hypothesis
