# revetl: `make demo` sets up and runs the whole thing; `make test` proves it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
REVETL := $(BIN)/revetl
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup airflow demo up down status test test-unit test-integration lint fmt \
	typecheck bench bench-latency bench-backfill bench-monitor clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --progress-bar on -e '.[dev]'
	@touch $(STAMP)

AIRFLOW_STAMP := $(VENV)/.installed-airflow
$(AIRFLOW_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --progress-bar on -e '.[dev,airflow]'
	@touch $(AIRFLOW_STAMP)

airflow: $(AIRFLOW_STAMP) ## add the optional Airflow 3 extra (DAGs in batch_ltv/dags) to the venv

setup: $(STAMP) ## venv, Python deps, prerequisite checks, jars (idempotent, cached)
	$(REVETL) setup

demo: setup ## install, start the stack, seed, stream a burst of sales, show ranks
	$(REVETL) up
	$(REVETL) seed --users 1000
	$(REVETL) demo

up: setup ## start the stack (same as `revetl up`)
	$(REVETL) up

down: ## stop every process the stack started
	@test -x $(REVETL) && $(REVETL) down || true

status: ## component table (same as `revetl status`)
	$(REVETL) status

test: setup $(AIRFLOW_STAMP) ## unit and integration tests against the real stack (starts it if needed)
	$(BIN)/pytest tests

test-unit: $(STAMP) ## unit tests only, no servers needed
	$(BIN)/pytest tests/unit

test-integration: setup $(AIRFLOW_STAMP) ## integration tests only
	$(BIN)/pytest tests/integration -m integration

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP) ## format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP) ## mypy alone
	$(BIN)/mypy

bench: setup ## stack numbers: up time, idle memory, insert-to-Kafka latency
	$(BIN)/python bench/stack.py

RATE ?= 100
DURATION ?= 30
bench-latency: ## sale-to-product-DB latency at RATE sales/s for DURATION seconds (stack up)
	$(BIN)/python bench/latency.py --rate $(RATE) --seconds $(DURATION)

bench-monitor: ## the monitor's CPU and memory, idle and at RATE sales/s for DURATION s (stack up)
	$(BIN)/python bench/monitor.py --rate $(RATE) --seconds $(DURATION)

bench-backfill: ## backfill history (365 days) and target timings on the seeded stack (stack up)
	$(BIN)/python bench/backfill.py

clean: down ## stop the stack and delete its state (data, logs, jars)
	rm -rf .revetl
