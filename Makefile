# Gandalf developer commands. Only Python 3.11 and pip are needed.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/gandalf.yaml

.PHONY: dev run test test-unit lint lock lock-check asyncapi bench clean reset-state

# Installs exactly the versions of uv.lock, with pip alone: requirements.lock is
# uv.lock exported (`make lock` writes both; `make lock-check` fails when stale).
$(BIN)/gandalf: requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null
	$(BIN)/pip install -r requirements.lock
	@touch $(BIN)/gandalf

dev: $(BIN)/gandalf ## create the venv and install every package (editable) + dev tools, locked

UV := $(BIN)/uv
$(UV): | $(BIN)/gandalf
	$(BIN)/pip install "uv>=0.5" >/dev/null

LOCK_EXPORT := export --frozen --all-packages --no-hashes --no-header --quiet

lock: $(UV) ## re-resolve uv.lock after a pyproject change, and export requirements.lock
	$(UV) lock
	$(UV) $(LOCK_EXPORT) -o requirements.lock

lock-check: $(UV) ## fail when uv.lock or requirements.lock is stale
	$(UV) lock --check
	$(UV) $(LOCK_EXPORT) -o $(VENV)/requirements.lock.check
	@cmp -s requirements.lock $(VENV)/requirements.lock.check || \
	    { echo "requirements.lock is stale: run make lock" >&2; exit 1; }

run: dev ## run the whole gateway on this machine (embedded NATS and PostgreSQL)
	$(BIN)/gandalf up --config $(CONFIG)

test: lint ## lint, then the test suite (~5 min; starts its own NATS/PostgreSQL/Valkey when none is running)
	$(BIN)/pytest -q

test-unit: dev ## the pure tests only (no server; seconds)
	$(BIN)/pytest -q -m unit

lint: dev ## ruff (with complexity), import contracts (.importlinter), mypy --strict on every package
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

asyncapi: dev ## regenerate docs/asyncapi.yaml (the bus) from contract.py
	$(BIN)/python -m gandalf_common.asyncapi

bench: dev ## benchmark: direct upstream vs through Gandalf (see bench/README.md)
	$(BIN)/python bench/run.py

clean: ## build artefacts only (the venv and caches); never the gateway's state
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist
	find . -name __pycache__ -type d -prune -not -path './.gandalf/*' -exec rm -rf {} +

STATE ?= $(or $(GANDALF_DATA_DIR),.gandalf)
reset-state: ## DELETES the gateway's state: database, NATS store, encryption key, admin key
	@if [ -d "$(STATE)" ] && ! flock -n "$(STATE)/gandalf.lock" true 2>/dev/null; then \
	  echo "gandalf up is running with $(STATE); stop it first" >&2; exit 1; fi
	@if [ -d "$(STATE)" ]; then \
	  echo "deleting $(STATE): the embedded PostgreSQL (keys, orgs, usage), the NATS store,"; \
	  echo "  the secrets encryption key and the generated admin key"; \
	  rm -rf "$(STATE)"; \
	else echo "nothing to delete: $(STATE) does not exist"; fi
