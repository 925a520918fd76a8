# waflow: `make run` brings the whole stack up, `make test` runs every check. Both install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

export PATH := $(HOME)/.local/bin:$(PATH)
UV ?= uv
SCALE ?= 1
INFRA := deploy/local/infra.sh
PACKAGES := -p waflow_common -p waflow_testing -p waflow_ingest -p waflow_conversation -p waflow_contacts \
            -p waflow_outbound -p waflow_simulator

.PHONY: help
help:
	@echo "make run    install what is missing, start Kafka, the database server (SecantusDB), the simulator and all services"
	@echo "            (SCALE=N: N processes of each service, each on its own port)"
	@echo "make test   lint, types, import rules, unit, integration and end-to-end tests"
	@echo "make down   stop everything 'make run' started;  make wipe  also delete local data"
	@echo "make bench  every benchmark in a short form, then one table of figures (never fails on a figure)"
	@echo "make soak   the long forms of the fault suite (10,000-message streams; tens of minutes)"
	@echo "make schemas  write each event's JSON Schema to docs/events (tests compare the models with them)"

.PHONY: uv
uv:
	@command -v $(UV) >/dev/null 2>&1 || { echo "installing uv from PyPI"; python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv; }

.PHONY: deps
deps: uv
	@$(UV) sync --frozen --quiet 2>/dev/null || $(UV) sync --quiet

# Java (Kafka's jars) and Maven (to fetch them) come from Debian when missing. The database server is built by
# cargo when a Rust toolchain is there, else installed from PyPI (deploy/local/infra.sh).
.PHONY: toolchains
toolchains:
	@missing=""; \
	command -v java >/dev/null 2>&1 || missing="$$missing default-jre-headless"; \
	command -v mvn >/dev/null 2>&1 || missing="$$missing maven"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; \
	fi

.PHONY: infra-install
infra-install: toolchains
	@bash $(INFRA) install

.PHONY: run
run: deps infra-install
	@bash $(INFRA) start
	@WAFLOW_SCALE=$(SCALE) $(UV) run python deploy/local/stack.py up

.PHONY: lint
lint: deps
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy $(PACKAGES)
	$(UV) run mypy bench deploy/local/stack.py examples
	$(UV) run lint-imports

.PHONY: test
test: deps infra-install lint
	$(UV) run pytest -q --durations=15

.PHONY: down
down:
	-@$(UV) run python deploy/local/stack.py down
	@bash $(INFRA) stop

.PHONY: wipe
wipe: down
	@bash $(INFRA) wipe

.PHONY: bench
bench: deps infra-install
	$(UV) run python -m bench

# The long forms of tests/blackbox (marked soak). Servers: WAFLOW_TEST_* if set, else local ones this run starts
# (then the tests that stop Kafka and the database server run too).
.PHONY: schemas
schemas: deps
	$(UV) run python -m waflow_common.events.schemas docs/events docs/asyncapi.json

.PHONY: soak
soak: deps infra-install
	WAFLOW_SOAK=1 $(UV) run pytest -q -m soak --durations=15 tests/blackbox
	WAFLOW_HOSTILE_EXAMPLES=200 WAFLOW_HOSTILE_SEED=$$RANDOM $(UV) run pytest -q tests/hostile
