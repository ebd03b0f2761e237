# The two commands of the README: `make demo` and `make test`. Each makes its own
# virtual environment (.venv) from pyproject.toml on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint conformance unit soak bench clean check-shared sync-shared

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ufdl-node demo

test: lint unit conformance

lint: $(STAMP)
	$(BIN)/ruff check ufdl_node handlers tests bench scripts
	$(BIN)/mypy

# Three worker processes (pytest-xdist; tests/README.md): most of a test's time is waiting on its
# subprocesses and servers, which the other workers overlap, even on two cores (tests/README.md
# has the times). TEST_WORKERS=1: one process.
TEST_WORKERS ?= 3
unit: $(STAMP)
	$(BIN)/python -m pytest $(if $(filter 1,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --dist worksteal)

# The long chaos soak (bench/README.md); `make test` runs a short one.
SOAK_MINUTES ?= 8
soak: $(STAMP)
	UFDL_SOAK_MINUTES=$(SOAK_MINUTES) $(BIN)/python -m pytest -p no:xdist -s -m soak tests/soak

conformance: $(STAMP)
	PYTHON=$(BIN)/python scripts/conformance.sh

# tests/conformance and docs/ copy ../shared (beside the checkout, where there is one):
# check-shared names each copy that differs, sync-shared rewrites them from it.
check-shared:
	$(PYTHON) scripts/sync_shared.py --check

sync-shared:
	$(PYTHON) scripts/sync_shared.py

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) dry-run demo-data .pytest_cache .mypy_cache .ruff_cache
