# Two commands on a fresh machine with only Python 3.11+ and make:
#   make drill   full DR drill against an embedded two-region AWS (moto on 127.0.0.1)
#   make test    lint, type-check and the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: drill test lint typecheck unit bench clean

$(STAMP): pyproject.toml requirements-lock.txt requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements-lock.txt -e '.[dev]'
	touch $(STAMP)

drill: $(STAMP)
	$(BIN)/jams-dr drill $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/cfn-lint templates/*.yaml

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache drill-reports
