# The verbs a newcomer types. Each target does its own set-up.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
export AUTHZ_HOME ?= $(CURDIR)/.authz

PROTOS := $(shell find proto -name '*.proto')
GEN_STAMP := authz_service/gen/.stamp
VENV_STAMP := $(VENV)/.installed

.PHONY: run test test-packages test-pg15 proto lint fmt clean help chart bench bench-peers lock

help:
	@echo "make run    start the service on an embedded PostgreSQL with a demo tenant"
	@echo "make test   run the test suite (real PostgreSQL, real gRPC)"
	@echo "make test-pg15    run the suite against Debian's PostgreSQL 15 with the documented roles"
	@echo "make test-packages install the system packages tests need (PgBouncer, Chromium; as root)"
	@echo "make proto  regenerate authz_service/gen from proto/"
	@echo "make lint   ruff, mypy --strict, import rules (lint-imports)"
	@echo "make chart  test the Helm chart and package it into dist/"
	@echo "make bench  measure throughput and latency; prints bench/ratio lines, writes bench-report.json"
	@echo "make bench-peers  Cerbos (npm), remote CheckUser and the edge check side by side, per core"
	@echo "make lock   re-resolve pyproject.toml's ranges into requirements.lock and requirements-dev.lock"
	@echo "make fmt    ruff format and ruff check --fix"
	@echo "make clean  remove the virtualenv, generated code and tool caches (keeps local data in $(AUTHZ_HOME))"

# Exact versions from the lock, then the project itself (no dependency resolution).
$(VENV_STAMP): pyproject.toml setup.py requirements-dev.lock
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $@

LOCK := $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --quiet
lock: $(VENV_STAMP)
	$(LOCK) --extra server --extra connectors -o requirements.lock
	$(LOCK) --extra dev -o requirements-dev.lock

$(GEN_STAMP): $(VENV_STAMP) $(PROTOS) scripts/gen_proto.py
	$(BIN)/python scripts/gen_proto.py
	@touch $@

proto: $(VENV_STAMP)
	$(BIN)/python scripts/gen_proto.py
	@touch $(GEN_STAMP)

run: $(GEN_STAMP)
	$(BIN)/authz dev

test: $(GEN_STAMP) test-packages
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# System packages tests need: PgBouncer (tests/pgbouncer.py) and Chromium for the web
# console's browser tests (tests/console_helpers.py, Playwright drives /usr/bin/chromium).
# As root (CI), installed when missing; otherwise their tests skip, or fail under CI=true.
TEST_PACKAGES := pgbouncer chromium
test-packages:
	@for p in $(TEST_PACKAGES); do \
	  command -v $$p >/dev/null 2>&1 || test -x /usr/sbin/$$p || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -q $$p >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q $$p >/dev/null; }; \
	  else echo "$$p is missing: its tests skip (apt-get install $$p, or run make test as root)"; fi; \
	done

# The whole suite (PYTEST_ARGS narrows it) against Debian's PostgreSQL 15 with the
# documented non-superuser roles; installs postgresql-15 as root when missing.
test-pg15: $(GEN_STAMP) test-packages
	PYTEST_ARGS="$(PYTEST_ARGS)" .ci/pg15

bench: $(GEN_STAMP)
	PYTHONPATH=scripts$${PYTHONPATH:+:$$PYTHONPATH} $(BIN)/python -m bench $(BENCH_ARGS)

# Cerbos (from npm, into .bench-peers/), our remote CheckUser and our edge check, per core. Not in CI.
bench-peers: $(GEN_STAMP)
	PYTHONPATH=scripts$${PYTHONPATH:+:$$PYTHONPATH} $(BIN)/python -m bench.peers $(BENCH_ARGS)

chart: $(GEN_STAMP)
	$(BIN)/python -m pytest tests/helm -q -p no:cacheprovider
	$(BIN)/python -c "import helm_python as h; print(h.package('helm/authz-service', destination='dist'))"

lint: $(GEN_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: $(VENV_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) authz_service/gen .pytest_cache .mypy_cache .ruff_cache
	@echo "local data in $(AUTHZ_HOME) kept; remove it by hand to start over"
