# Every target does its own set-up: a fresh clone needs nothing but python3 >= 3.11.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser test test-cluster check lint fmt typecheck demo bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the console's browser tests (Playwright drives it; it downloads no
# browser of its own). Installed when missing and we may (root); otherwise those tests skip.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "make browser: no chromium and not root; the browser tests will skip"; fi; }

test: $(STAMP) browser
	$(BIN)/pytest -q

# The integration suite again on a local 3-primary Redis Cluster (valkey, started by the
# tests) with the sharded layout: RELAYGRAPH_TEST_CLUSTER=1 (tests/support/layout.py).
test-cluster: $(STAMP)
	RELAYGRAPH_TEST_CLUSTER=1 $(BIN)/pytest -q tests/integration

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint test

demo: $(STAMP)
	$(BIN)/relaygraph run examples/bug_triage/graph.json --handlers examples.bug_triage.handlers --input '{"title": "Checkout returns 500", "body": "production is down for all users"}'

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
