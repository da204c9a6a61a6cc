# The two commands of the README: `make synth` and `make test`. Both set up what is
# missing (virtual environment, pinned Python packages, pinned CDK CLI, redis-server).

SHELL := /bin/bash
ENV ?= dev
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CDK := node_modules/.bin/cdk

# jsii prints an end-of-life banner for old Node versions on every run unless the value
# names the running major version.
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := $(shell node -p 'process.versions.node.split(".")[0]' 2>/dev/null)
export CDK_DISABLE_CLI_TELEMETRY := true
# The CDK CLI runs `python3 app.py` (cdk.json): make that the project's interpreter.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: synth test lint typecheck pytest setup redis-server clean local bench-worker \
	autoscale-once bench-autoscaler proofs

## Synthesize one environment (ENV=dev|staging|prod) into cdk.out/ and list its stacks.
synth: $(VENV)/.runtime-installed $(CDK)
	$(CDK) synth --quiet --no-notices --context env=$(ENV)
	@$(BIN)/python -m stacks.list_stacks cdk.out

## Every check: lint, format, types, then all tests (CDK assertions, cdk-nag, cfn-lint, Redis).
test: setup lint typecheck pytest

setup: $(VENV)/.dev-installed $(CDK) redis-server

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

pytest: $(VENV)/.dev-installed $(CDK) redis-server
	$(BIN)/pytest

$(VENV)/.runtime-installed: requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "Python 3.11 or newer is needed (found: $$($(PYTHON) --version))"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

$(VENV)/.dev-installed: requirements-dev.txt $(VENV)/.runtime-installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

$(CDK): package.json package-lock.json
	@command -v npm >/dev/null || { echo "npm (Node.js 20 or newer) is needed for the CDK CLI"; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

## Run the platform on this machine: redis-server, a worker per group, beat, Flower.
local: $(VENV)/.dev-installed redis-server
	$(BIN)/python tools/run_local.py --env $(ENV)

## Run the autoscaler once against a local Redis (sample backlog) with a dry-run ECS.
autoscale-once: $(VENV)/.dev-installed redis-server
	$(BIN)/python tools/autoscale_once.py --env $(ENV)

## The scaling policy against published policies on simulated workloads.
bench-autoscaler: $(VENV)/.dev-installed
	$(BIN)/python bench/autoscaler_sim.py

## Throughput and start latency of the shipped worker settings vs Celery's defaults.
bench-worker: $(VENV)/.dev-installed redis-server
	$(BIN)/python bench/worker_bench.py

## Faults and bad input, every seed and variant (CI runs a sample); figures to bench/results/.
proofs: $(VENV)/.dev-installed $(CDK) redis-server
	PROOFS_EXHAUSTIVE=1 PROOFS_REPORT=bench/results/proofs.md $(BIN)/pytest tests/proofs -q -p no:logging

## Tests start their own redis-server on a free loopback port; install it if missing.
redis-server:
	@command -v redis-server >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing redis-server (Debian package)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null; \
		else \
			echo "redis-server is missing: install it with 'sudo apt-get install redis-server'"; exit 1; \
		fi; }

clean:
	rm -rf cdk.out .pytest_cache .mypy_cache .ruff_cache
