# keen-db: `make demo` and `make test` install whatever is missing, start the embedded
# PostgreSQL, migrate and seed, then run the walkthrough or every test.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := postgresql-15 postgresql-contrib postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl \
	postgresql-15-plpgsql-check postgresql-15-cron postgresql-15-auto-failover pgbouncer
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test setup system venv up down doctor pgtap pytest lint schema bench clean

demo: setup
	$(BIN)/keen-db demo

test: setup
	$(BIN)/pytest --cov --cov-report=term-missing:skip-covered tests

setup: system venv up

# Debian packages: installed only when one is missing.
system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

up: venv
	$(BIN)/keen-db up

down:
	$(BIN)/keen-db down

doctor:
	$(BIN)/keen-db doctor

pgtap: setup
	$(BIN)/pytest tests/test_pgtap.py

pytest: setup
	$(BIN)/pytest tests

# Lint and types (no database needed): ruff, mypy, and squawk's online-safe rules on every
# migration after 0008 (0001-0008 landed before the rule and never change).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	@files=$$(ls db/schema/[0-9]*.sql | grep -v rollback | awk -F/ '{ n = substr($$NF, 1, 4) + 0; if (n > 8) print }'); \
	if [ -n "$$files" ]; then $(BIN)/squawk --config=.squawk.toml $$files; else echo "squawk: no migration after 0008"; fi

# db/schema.sql, the current schema as one file, from the migrated embedded database.
schema: setup
	$(BIN)/keen-db schema --write

bench: setup
	$(BIN)/keen-db bench

clean: down
	rm -rf .keen
