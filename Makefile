PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint typecheck unit test demo limits faults clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy --strict batchpoll

unit: install
	$(BIN)/pytest -q

test: lint typecheck unit

demo: install
	$(BIN)/batchpoll demo

limits: install
	$(BIN)/python benchmarks/limits.py

faults: install
	$(BIN)/python benchmarks/faults.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
