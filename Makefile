# Two commands for a newcomer: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test install lint migrate clean cluster bench

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

migrate: install
	$(PY) manage.py migrate --noinput

run: migrate
	$(PY) manage.py collectstatic --noinput -v 0
	$(PY) manage.py demo_setup --url http://$(HOST):$(PORT)/
	$(VENV)/bin/daphne -b $(HOST) -p $(PORT) chatproject.asgi:application

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install
	$(VENV)/bin/ruff check .
	$(PY) manage.py makemigrations --check --dry-run
	bash scripts/ensure_chromium.sh
	bash scripts/ensure_nginx.sh
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The load benchmark (under five minutes): the product against two reference relays.
bench: install
	$(VENV)/bin/pip install --quiet -r requirements-bench.txt
	$(PY) bench/run.py $(BENCH_ARGS)

# N daphne processes (default 2) on PostgreSQL + Redis behind a private nginx (docs/operations.md).
cluster: install
	bash scripts/ensure_nginx.sh
	$(PY) scripts/cluster.py $(N)

clean:
	rm -rf $(VENV) staticfiles db.sqlite3* .test-db.sqlite3*
