# Quick start: `make demo` and `make test` work on a fresh machine; both create .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-test
PG_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

BOTPY  := .venv-botpy
BOTPY_STAMP := $(BOTPY)/.installed
PTB    := .venv-ptb
PTB_STAMP := $(PTB)/.installed
AIOGRAM := .venv-aiogram
AIOGRAM_STAMP := $(AIOGRAM)/.installed

.PHONY: demo test lint install postgres bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(STAMP)

# Starts the local PostgreSQL cluster when it is not answering (the store tests use it).
postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 || { \
	  echo "starting PostgreSQL"; \
	  pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; \
	  for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; \
	  pg_isready -h 127.0.0.1 -p 5432; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint postgres
	HERMES_TEST_POSTGRES_URL='$(PG_URL)' $(BIN)/pytest

demo: $(STAMP)
	$(BIN)/python -m hermes.demo

# The official QQ SDK, for the side-by-side throughput benchmark, in a venv of its own
# (a stamp, as for .venv: an install that failed is retried by the next run).
$(BOTPY_STAMP):
	$(PYTHON) -m venv $(BOTPY)
	$(BOTPY)/bin/pip install -q qq-botpy==1.2.1
	touch $@

# The Telegram libraries for the receive benchmark, each in a venv of its own.
$(PTB_STAMP):
	$(PYTHON) -m venv $(PTB)
	$(PTB)/bin/pip install -q python-telegram-bot==22.8
	touch $@

$(AIOGRAM_STAMP):
	$(PYTHON) -m venv $(AIOGRAM)
	$(AIOGRAM)/bin/pip install -q aiogram==3.31.0
	touch $@

# Every benchmark: tables on stdout, bench/results/latest.json, BENCHMARKS.md rewritten.
bench: $(STAMP) $(BOTPY_STAMP) $(PTB_STAMP) $(AIOGRAM_STAMP) postgres
	cd bench && HERMES_TEST_POSTGRES_URL='$(PG_URL)' ../$(BIN)/python run_all.py

clean:
	rm -rf $(VENV) $(BOTPY) $(PTB) $(AIOGRAM) .demo .pytest_cache .mypy_cache .ruff_cache
