# Two commands for a newcomer: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test install install-dev lint migrate clean cluster bench

# requirements.txt is what the service runs on (`make run`, `make cluster`);
# requirements-dev.txt adds the tests and tools (`make test`, `make lint`), and
# requirements-bench.txt the benchmarks. One stamp file each, so that a venv made by
# `make run` gets the rest when `make test` comes, and a changed file reinstalls.
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-dev requirements-bench.txt
	$(VENV)/bin/pip install --quiet -r requirements-bench.txt
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# The server refuses to start without DJANGO_SECRET_KEY (DJANGO_DEBUG off, as in
# production): `make run`, `make migrate` and `make cluster` use one made for this
# checkout, random and kept in the gitignored .run/secret_key, unless DJANGO_SECRET_KEY
# is set.
LOCAL_SECRET_KEY := .run/secret_key
migrate run cluster: export DJANGO_SECRET_KEY ?= $(shell cat $(LOCAL_SECRET_KEY) 2>/dev/null)

$(LOCAL_SECRET_KEY):
	mkdir -p $(@D)
	umask 077 && $(PYTHON) -c "import secrets; print(secrets.token_urlsafe(50))" > $@

migrate: install $(LOCAL_SECRET_KEY)
	$(PY) manage.py migrate --noinput

run: migrate
	$(PY) manage.py loaddata model_prices -v 0
	$(PY) manage.py collectstatic --noinput -v 0
	$(PY) manage.py demo_setup --url http://$(HOST):$(PORT)/
	$(VENV)/bin/daphne -b $(HOST) -p $(PORT) chatproject.asgi:application

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	DJANGO_SETTINGS_MODULE=tests.settings $(PY) manage.py makemigrations --check --dry-run
	bash scripts/ensure_chromium.sh
	bash scripts/ensure_nginx.sh
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The load benchmark (under five minutes): the product against two reference relays.
bench: $(VENV)/.installed-bench
	$(PY) bench/run.py $(BENCH_ARGS)

# N daphne processes (default 2) on PostgreSQL + Redis behind a private nginx; with HOSTS=N,
# across hosts: N app hosts, a data host and a proxy host in network namespaces (root;
# docs/operations.md).
cluster: install $(LOCAL_SECRET_KEY)
	bash scripts/ensure_nginx.sh
ifdef HOSTS
	$(PY) scripts/netns_cluster.py $(HOSTS)
else
	$(PY) scripts/cluster.py $(N)
endif

clean:
	rm -rf $(VENV) staticfiles db.sqlite3* .test-db.sqlite3*
