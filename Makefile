# Agentline: two commands matter, `make up` (run it all on this machine) and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTEST_ARGS ?=

.PHONY: help setup up down test test-python test-frontend test-browser e2e bench lint k8s-validate

help:
	@echo "make setup         install everything (idempotent; seconds when nothing is missing)"
	@echo "make up            run the whole platform on this machine (Ctrl-C or make down stops it)"
	@echo "make down          stop what make up started"
	@echo "make test          every test: unit, integration and end-to-end, then k8s-validate"
	@echo "make e2e           only the end-to-end tests (Python, then the browser against the stack)"
	@echo "make bench         every benchmark; prints a table, writes bench-results.json"
	@echo "make lint          ruff and mypy"
	@echo "make k8s-validate  render and validate the Kubernetes manifests (after make setup)"

setup:
	scripts/setup.sh

up: setup
	scripts/up.sh

down:
	scripts/down.sh

# Every test of every package in one run; bench-marked tests belong to `make bench` only.
# pytest's exit code 5 (nothing collected) fails the target like any other failure. All three
# parts run even when one fails, so one CI run reports every failure; the target fails if any did.
test: setup
	@status=0; \
	$(MAKE) --no-print-directory test-python || status=1; \
	$(MAKE) --no-print-directory test-frontend || status=1; \
	$(MAKE) --no-print-directory test-browser || status=1; \
	$(MAKE) --no-print-directory k8s-validate || status=1; \
	exit $$status

test-python:
	uv run --frozen pytest -m "not bench" -p no:cacheprovider $(PYTEST_ARGS)

test-frontend:
	scripts/test-frontend.sh

# The Test Agent call in headless Chromium against the whole stack, inside a network namespace.
test-browser:
	scripts/e2e-stack.sh

e2e: setup
	@status=0; \
	uv run --frozen pytest -m e2e -p no:cacheprovider $(PYTEST_ARGS) || status=1; \
	$(MAKE) --no-print-directory test-browser || status=1; \
	exit $$status

bench: setup
	uv run --frozen python scripts/bench.py

lint:
	uv run --frozen ruff check .
	uv run --frozen ruff format --check .
	uv run --frozen mypy libs/common/src services/*/src

# Needs the tools `make setup` installs; says which are missing.
k8s-validate:
	scripts/k8s-validate.sh
