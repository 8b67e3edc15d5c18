# Two commands set everything up: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEV_CONFIG ?= dev-config.yaml
STAMP := $(VENV)/.installed

.PHONY: install run test test-sqlite test-postgres lint clean conformance interop

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

$(DEV_CONFIG): | $(STAMP)
	$(BIN)/parley generate-config --dev --server-name localhost --port 8008 \
		--data-dir dev-data --output $(DEV_CONFIG)

run: install $(DEV_CONFIG)
	$(BIN)/parley run -c $(DEV_CONFIG)

# The whole suite on SQLite and on PostgreSQL; ends with "tests: N passed, N failed".
test: install
	$(BIN)/ruff check .
	$(BIN)/python -m tests.run_suite

test-sqlite: install
	PARLEY_TEST_ENGINES=sqlite $(BIN)/python -m tests.run_suite

test-postgres: install
	PARLEY_TEST_ENGINES=postgres $(BIN)/python -m tests.run_suite

lint: install
	$(BIN)/ruff check .

# Parley against the pinned PyPI Synapse (its own venv, bench/setup_synapse.sh) over TLS
# on loopback; not part of `make test` (it downloads Synapse). 1-3 min once installed.
interop: install
	bash bench/setup_synapse.sh
	$(BIN)/python -m tests.interop.run

conformance: install
	$(BIN)/python ../shared/conformance/cs_conformance.py --base-url http://127.0.0.1:8008

clean:
	rm -rf $(VENV) _trial_temp* *.egg-info
