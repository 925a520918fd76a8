# waflow: `make run` brings the whole stack up, `make test` runs every check. Both install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

export PATH := $(HOME)/.local/bin:$(PATH)
UV ?= uv
INFRA := deploy/local/infra.sh
PACKAGES := -p waflow_common -p waflow_testing -p waflow_ingest -p waflow_conversation -p waflow_contacts \
            -p waflow_outbound -p waflow_simulator

.PHONY: help
help:
	@echo "make run    install what is missing, start Kafka, FerretDB, the simulator and all services"
	@echo "make test   lint, types, import rules, unit, integration and end-to-end tests"
	@echo "make down   stop everything 'make run' started;  make wipe  also delete local data"

.PHONY: uv
uv:
	@command -v $(UV) >/dev/null 2>&1 || { echo "installing uv"; python3 -m pip install --quiet --user uv || curl -LsSf https://astral.sh/uv/install.sh | sh; }

.PHONY: deps
deps: uv
	@$(UV) sync --frozen --quiet 2>/dev/null || $(UV) sync --quiet

.PHONY: infra-install
infra-install:
	@bash $(INFRA) install

.PHONY: lint
lint: deps
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy $(PACKAGES)
	$(UV) run lint-imports

.PHONY: test
test: deps infra-install lint
	$(UV) run pytest -q

.PHONY: down
down:
	-@bash deploy/local/stack.sh stop 2>/dev/null || true
	@bash $(INFRA) stop

.PHONY: wipe
wipe: down
	@bash $(INFRA) wipe
