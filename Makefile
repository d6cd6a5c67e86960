# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PORT ?= 8000
# Loopback only: the demo runs with DEBUG on and API keys off. HOST=0.0.0.0 exposes it.
HOST ?= 127.0.0.1

.PHONY: install install-dev assets run test test-postgres lint bench soak clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt requirements.txt $(VENV)/.installed
	$(PIP) install -q -r requirements-dev.txt
	touch $@

# Front-end libraries: pinned in package.json/package-lock.json, installed from
# the npm registry and copied to static/vendor (never committed).
static/vendor/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	$(PY) scripts/vendor_assets.py
	touch $@

assets: $(VENV)/.installed static/vendor/.installed

# Local development settings (DEBUG=1, a generated SECRET_KEY), written once and
# git-ignored, so every `manage.py` command works without extra variables.
LOCAL_ENV ?= .env.local
$(LOCAL_ENV):
	$(PYTHON) scripts/local_env.py $@

install: $(VENV)/.installed assets $(LOCAL_ENV)
	DEBUG=1 $(PY) manage.py migrate --noinput -v0

install-dev: install $(VENV)/.installed-dev

# Serves the ASGI app (daphne) with the demo generator feeding it over HTTP;
# Ctrl-C stops both. ACCESS_LOG=1 prints a line per request (off: the
# generator's requests would scroll the startup message away).
run: install
	HOST=$(HOST) PORT=$(PORT) $(PY) scripts/run.py

test: install-dev
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-postgres

# The same suite on PostgreSQL + Redis. Skipped with a message when they are
# not reachable; .ci/run sets REQUIRE_SCALE_OUT=1 to make that a failure.
test-postgres: install-dev
	@if $(PY) scripts/services_up.py; then \
		DATABASE_URL=$${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test} \
		REDIS_URL=$${TEST_REDIS_URL:-redis://127.0.0.1:6379/0} \
		$(VENV)/bin/pytest -q $(PYTEST_ARGS); \
	elif [ "$$REQUIRE_SCALE_OUT" = "1" ]; then \
		echo "PostgreSQL/Redis not reachable and REQUIRE_SCALE_OUT=1"; exit 1; \
	else \
		echo "SKIPPED: PostgreSQL + Redis suite (servers not reachable on 127.0.0.1:5432 / :6379)"; \
	fi

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DEBUG=1 $(VENV)/bin/mypy .

bench: install-dev
	$(PY) -m bench $(BENCH_ARGS)

soak: install-dev
	$(PY) -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) node_modules static/vendor staticfiles data
