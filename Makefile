# Every target but clean runs scripts/install.sh first (idempotent; fast when up to date).
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: install run test lint bench clean

install:
	bash scripts/install.sh

run: install
	$(VENV)/bin/flywheel run

test: install
	$(PYTHON) -m pytest -x -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install
	$(PYTHON) -m bench.run_all

clean:
	rm -rf var/
