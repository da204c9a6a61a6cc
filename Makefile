# The two commands of the README: `make synth` and `make test`. Both set up what is
# missing (virtual environment, pinned Python packages, pinned CDK CLI, redis-server).

SHELL := /bin/bash
ENV ?= dev
# The app's config directory (catalog.toml, <env>.toml), the same for synth, local,
# autoscale-once, simulate and compose; default: the sample app's. APP: where its task
# modules are imported from locally (default: the config's app.image.build_dir).
CONFIG ?= examples/samples/config
APP ?=
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CDK := node_modules/.bin/cdk
SECURITY_VENV := .venv-security

export CDK_DISABLE_CLI_TELEMETRY := true
# The pinned Node.js (package.json: a maintained LTS) runs the CDK CLI and jsii, whatever
# node the machine has; the CDK CLI runs `.venv/bin/python app.py` (cdk.json).
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/$(BIN):$(PATH)
# A prebuilt app image for this deploy (the config names its repository): CI builds once
# and promotes the same digest through every environment.
IMAGE_DIGEST ?=
CDK_CONTEXT = --context env=$(ENV) --context config_dir=$(abspath $(CONFIG)) \
	$(if $(IMAGE_DIGEST),--context image_digest=$(IMAGE_DIGEST))
# cdk deploy's approval of security-sensitive changes: CI, which has no terminal, sets never.
APPROVAL ?= broadening

.PHONY: synth test lint typecheck pytest setup redis-server chromium clean local bench-worker \
	autoscale-once bench-autoscaler preview-dashboards datadog-push security test-image chaos \
	failover proofs template-diff

## Synthesize one environment (ENV=dev|staging|prod) into cdk.out/ and list its stacks.
synth: $(VENV)/.runtime-installed $(CDK)
	$(CDK) synth --quiet --no-notices $(CDK_CONTEXT)
	@$(BIN)/python -m stacks.list_stacks cdk.out

## What a deploy of ENV would change, stack by stack, after the preflight checks.
.PHONY: diff deploy preflight
diff: preflight
	$(CDK) diff --no-notices $(CDK_CONTEXT)

## Deploy every stack of ENV (CONFIG=, IMAGE_DIGEST=, APPROVAL=never in CI) after the
## preflight checks: credentials, bootstrap, Docker and its build platform.
deploy: preflight
	$(CDK) deploy --all --no-notices --require-approval $(APPROVAL) $(CDK_CONTEXT)

## Delete every stack of ENV, after a confirmation (docs/operations.md#teardown: what stays;
## outside dev turn the stateful stacks' termination protection off first). A config that
## leaves the digest to each deploy needs IMAGE_DIGEST here too; any digest will do.
.PHONY: destroy
destroy: $(VENV)/.runtime-installed $(CDK)
	$(CDK) destroy --all --no-notices $(CDK_CONTEXT)

preflight: $(VENV)/.dev-installed $(CDK)
	$(BIN)/python -m tools.preflight --config-dir $(CONFIG) --env $(ENV) \
		$(if $(IMAGE_DIGEST),--image-digest $(IMAGE_DIGEST))

## Every check: lint, format, types, then all tests (CDK assertions, cdk-nag, cfn-lint, Redis).
test: setup lint typecheck pytest

setup: $(VENV)/.dev-installed $(CDK) redis-server chromium

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

# The tests wait on real workers and servers more than they compute: one pytest-xdist
# worker per core (at most 4, each synthesizes the environments it tests); an idle worker
# takes tests queued for a busy one (worksteal), as their durations vary from 0.01 to 40 s.
pytest: $(VENV)/.dev-installed $(CDK) redis-server chromium
	$(BIN)/pytest --numprocesses auto --maxprocesses 4 --dist worksteal

$(VENV)/.runtime-installed: requirements.txt worker_image/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "Python 3.11 or newer is needed (found: $$($(PYTHON) --version))"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

$(VENV)/.dev-installed: requirements-dev.txt worker_image/requirements.txt lambdas/autoscaler/requirements.txt $(VENV)/.runtime-installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

$(CDK): package.json package-lock.json
	@command -v npm >/dev/null || { echo "npm is needed to install the CDK CLI and its Node.js"; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

## Run the platform on this machine: redis-server, a worker per group, beat, Flower.
local: $(VENV)/.dev-installed redis-server
	$(BIN)/python -m tools.run_local --config-dir $(CONFIG) --env $(ENV) $(if $(APP),--app-dir $(APP))

## docker compose files for the app (CONFIG, ENV) in .compose/: `make base-image` first, then
## `docker compose -f .compose/docker-compose.yml up --build`.
.PHONY: compose base-image
compose: $(VENV)/.dev-installed
	$(BIN)/python -m tools.run_local --config-dir $(CONFIG) --env $(ENV) --compose .compose

## The platform's base image, which an app's Dockerfile starts FROM, built with Docker under
## the tag CDK passes to app builds (CELERY_PLATFORM_IMAGE). PLATFORM=linux/amd64 to choose.
base-image: $(VENV)/.runtime-installed $(CDK)
	docker build $(if $(PLATFORM),--platform $(PLATFORM)) \
		$$($(BIN)/python -c 'from stacks.parts.app_image import base_image_build_options as o; print(*o())') worker_image

## Print that tag, for an app build's --build-arg CELERY_PLATFORM_IMAGE (CI: `make -s base-image-tag`).
.PHONY: base-image-tag
base-image-tag: $(VENV)/.runtime-installed
	@$(BIN)/python -c 'from stacks.parts.app_image import BASE_IMAGE_TAG; print(BASE_IMAGE_TAG)'

## Monthly list-price cost of every environment of the config (CONFIG), priced from its
## synthesized templates, into docs/cost.md (OUT=<file> to write elsewhere).
.PHONY: cost
cost: $(VENV)/.runtime-installed $(CDK)
	$(BIN)/python -m tools.cost --config-dir $(CONFIG) $(if $(OUT),--out $(OUT))

## Run the autoscaler once against a local Redis (sample backlog) with a dry-run ECS.
autoscale-once: $(VENV)/.dev-installed redis-server
	$(BIN)/python -m tools.autoscale_once --config-dir $(CONFIG) --env $(ENV)

## The scaling policy against published policies: every workload shape, decisions every 300 s
## and 60 s, scale-in protection on and off; tables and plots in bench/results/.
bench-autoscaler: $(VENV)/.dev-installed
	$(BIN)/python -m bench.autoscaler_sim bench

## One workload through the policy and the anchors, with a plot, for a worker group of the
## app's catalog (GROUP=, default the first: its target, bounds and concurrency):
## WORKLOAD=steady|diurnal|batch|spike|long|mixed or CSV=jobs.csv (arrival_s,service_s);
## INTERVAL=300 (s), PROTECTION=off,
## PLOT=path.png, ARGS= for more (see `python -m bench.autoscaler_sim simulate --help`).
.PHONY: simulate
WORKLOAD ?= batch
INTERVAL ?= 300
simulate: $(VENV)/.dev-installed
	$(BIN)/python -m bench.autoscaler_sim simulate --config-dir $(CONFIG) --env $(ENV) \
		$(if $(GROUP),--group $(GROUP)) \
		$(if $(CSV),--csv $(CSV),--workload $(WORKLOAD)) --interval $(INTERVAL) \
		$(if $(filter off,$(PROTECTION)),--no-protection) $(if $(PLOT),--plot $(PLOT)) $(ARGS)

## One autoscaler run at scale (50 worker groups over 200 queues) against a real redis-server
## and moto's ECS: Redis round trips, time, memory, and the Lambda-time estimate.
.PHONY: bench-autoscaler-run
bench-autoscaler-run: $(VENV)/.dev-installed redis-server
	$(BIN)/python -m bench.autoscaler_run $(ARGS)

## How long a high-priority task waits behind rate-limited ones sharing its worker group.
.PHONY: bench-rate-limits
bench-rate-limits: $(VENV)/.dev-installed redis-server
	$(BIN)/python -m bench.rate_limit_tiers

## Throughput and start latency of the shipped worker settings vs Celery's defaults
## (ARGS="--repeat 3" for medians of interleaved rounds, "--profile" for cProfile files).
bench-worker: $(VENV)/.dev-installed redis-server
	$(BIN)/python -m bench.worker_bench $(ARGS)

## The environment's CloudWatch and Datadog dashboards as a local HTML page (cdk.out/).
preview-dashboards: $(VENV)/.dev-installed
	$(BIN)/python -m tools.preview_dashboards --config-dir $(CONFIG) --env $(ENV)

## What the work tree changes in the templates of every environment of CONFIG against BASE
## (a git ref, default HEAD), stack by stack; fails when a stateful resource (broker, secret,
## bucket, key, logs, network) loses its logical ID. ENV= on the command line: that one only.
BASE ?= HEAD
template-diff: $(VENV)/.dev-installed $(CDK)
	$(BIN)/python -m tools.template_diff --config-dir $(CONFIG) --base $(BASE) \
		$(if $(findstring command line,$(origin ENV)),--env $(ENV))

## Create or update the environment's Datadog dashboard and monitors through the API
## (keys: DD_API_KEY/DD_APP_KEY or Secrets Manager). ARGS="--dry-run" prints them instead.
datadog-push: $(VENV)/.dev-installed
	$(BIN)/python -m tools.datadog_push --config-dir $(CONFIG) --env $(ENV) $(ARGS)

## The dashboards preview test opens the page in headless Chromium; install it if missing.
chromium:
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing chromium (Debian package)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
		else \
			echo "chromium is missing: install it with 'sudo apt-get install chromium'"; exit 1; \
		fi; }

## cdk-nag (AwsSolutions + NIST 800-53 R5), cfn-lint, checkov, IAM wildcards and a secret scan
## on every environment; writes security/report.md and fails on anything unacknowledged.
security: $(VENV)/.dev-installed $(SECURITY_VENV)/.installed
	$(BIN)/python -m security.sweep --checkov $(SECURITY_VENV)/bin/checkov

# checkov's own pins clash with ours: it lives in its own virtual environment.
$(SECURITY_VENV)/.installed: requirements-security.txt
	@test -x $(SECURITY_VENV)/bin/python || $(PYTHON) -m venv $(SECURITY_VENV)
	$(SECURITY_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-security.txt
	@touch $@

## Build worker_image/ and the sample app's image FROM it with podman on a locally bootstrapped
## Debian base, and run a task of the app in it.
test-image: $(VENV)/.dev-installed redis-server
	@command -v podman >/dev/null && command -v debootstrap >/dev/null && command -v runc >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing podman, buildah, runc and debootstrap (Debian packages)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc debootstrap >/dev/null; \
		else \
			echo "podman, runc and debootstrap are missing: the test will be skipped"; \
		fi; }
	RUN_IMAGE_TEST=1 $(BIN)/pytest -p no:cacheprovider tests/image -v

## Chaos soak: 10,000 tasks while workers are killed and Redis restarts; nothing may be lost.
chaos: $(VENV)/.dev-installed redis-server
	$(BIN)/python -m bench.chaos

## Broker failover under load: a primary, a replica and a forwarder as the endpoint; every
## mode (reset, silent, failover-silent, read-only, stall, lossy-replication) against the
## goals; figures to bench/results/failover.md. ARGS="--mode reset --quick" for a sample.
failover: $(VENV)/.dev-installed redis-server
	$(BIN)/python -m bench.failover $(ARGS)

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
