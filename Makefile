# Gandalf developer commands. Only Python 3.11 and pip are needed.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/gandalf.yaml

.PHONY: dev run test lint bench clean

$(BIN)/gandalf: requirements-dev.txt libs/common/pyproject.toml services/*/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null
	$(BIN)/pip install -r requirements-dev.txt
	@touch $(BIN)/gandalf

dev: $(BIN)/gandalf ## create the venv and install every package (editable) + dev tools

run: dev ## run the whole gateway on this machine (embedded NATS and PostgreSQL)
	$(BIN)/gandalf up --config $(CONFIG)

test: dev ## the test suite (starts its own NATS/Postgres when none is running)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: dev
	$(BIN)/ruff check .

bench: dev ## benchmark: direct upstream vs through Gandalf (see bench/README.md)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .gandalf .pytest_cache .ruff_cache
