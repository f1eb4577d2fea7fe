# The two commands of the README. Both work on a fresh machine with only Python 3.11+:
# they create .venv/, install the locked dependencies with uv, then do their job.
PYTHON ?= python3
VENV := .venv
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.8

.PHONY: setup demo test lint ddl

setup: $(VENV)/.synced

$(VENV)/.synced: pyproject.toml uv.lock
	@test -x $(UV) || ($(PYTHON) -m venv $(VENV) && $(VENV)/bin/python -m pip install --quiet uv==$(UV_VERSION))
	$(UV) sync --frozen --quiet
	@touch $@

## make demo: build the OMOP warehouse from the bundled demo data, with quality checks
demo: setup
	$(VENV)/bin/passerelle demo

## make test: run the whole test suite (what CI runs)
test: setup
	$(VENV)/bin/python -m pytest

lint: setup
	$(VENV)/bin/ruff check .
