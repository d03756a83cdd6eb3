# Two commands for a new user: `make demo` (the main job on the synthetic default) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-slow test-all mutants demo lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

# The tests marked slow (multi-process, fault injection, load, browser at every size, ...):
# CI runs them after `make test`, so nothing important is only run by hand.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow and not gpu"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu"

# Plant each bug of tests/mutations/catalogue.yaml in a copy of src/ and check that the default
# suite (make test) catches it; prints the score (docs/testing.md records it).
mutants: $(STAMP)
	$(BIN)/python tests/mutations/run.py --json mutants.json

demo: $(STAMP)
	$(BIN)/sanet demo --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/model_cost.py
	$(BIN)/sanet bench --device cpu

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
