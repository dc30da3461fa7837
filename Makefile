# Two commands matter: `make run` and `make test`. Everything else is a building block.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PORT ?= 8000
HOST ?= 127.0.0.1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run demo test install install-dev migrate assets worker beat emulators lint typecheck messages check-deploy bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The stamp files make a second `make run` skip installation entirely.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -q -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install -q -e ".[dev]"
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

migrate: install
	$(PY) manage.py migrate --noinput -v 0

assets: install
	$(PY) manage.py compile_translations
	$(PY) manage.py collectstatic --noinput -v 0

run: install migrate assets
	$(PY) manage.py sync_providers
	@echo "Llama Chat on http://$(HOST):$(PORT)/"
	SITE_URL=$${SITE_URL:-http://$(HOST):$(PORT)} DRAIN_SECONDS=$${DRAIN_SECONDS:-5} \
	$(VENV)/bin/daphne -b $(HOST) -p $(PORT) chatsite.asgi:application

# The app on the local provider emulators: every model answers without real keys.
EMULATOR_ENV := CLOUDFLARE_BASE_URL=http://127.0.0.1:9100/client/v4 \
	CLOUDFLARE_ACCOUNT_ID=0123456789abcdef0123456789abcdef CLOUDFLARE_API_TOKEN=cf-emu-token-0001 \
	DASHSCOPE_BASE_URL=http://127.0.0.1:9100/api/v1 DASHSCOPE_API_KEY=sk-emu-dashscope-0001 \
	QIANFAN_BASE_URL=http://127.0.0.1:9100 QIANFAN_AK=emu-qianfan-ak QIANFAN_SK=emu-qianfan-sk

demo: install migrate assets
	@$(PY) manage.py run_emulators --port 9100 > var/emulators.log 2>&1 & echo $$! > var/emulators.pid
	@trap 'kill $$(cat var/emulators.pid) 2>/dev/null' EXIT INT TERM; \
	$(EMULATOR_ENV) $(PY) manage.py sync_providers && \
	echo "Llama Chat on the emulators: http://$(HOST):$(PORT)/" && \
	$(EMULATOR_ENV) SITE_URL=$${SITE_URL:-http://$(HOST):$(PORT)} DRAIN_SECONDS=$${DRAIN_SECONDS:-5} $(VENV)/bin/daphne -b $(HOST) -p $(PORT) chatsite.asgi:application

# axe-core for the accessibility browser tests (package.json pins it; nothing here is served).
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

test: install-dev node_modules/.installed
	$(PY) manage.py compile_translations
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install-dev
	$(PY) bench/run.py $(BENCH_ARGS)

worker: install
	$(VENV)/bin/celery -A chatsite worker --loglevel=INFO --concurrency=$${CELERY_CONCURRENCY:-4}

beat: install
	$(VENV)/bin/celery -A chatsite beat --loglevel=INFO --schedule=var/celerybeat-schedule

emulators: install
	$(PY) manage.py run_emulators --port $${EMULATOR_PORT:-9100}

lint: install-dev
	$(VENV)/bin/ruff check .

typecheck: install-dev
	$(VENV)/bin/mypy chatsite conversations providers

messages: install
	$(PY) manage.py makemessages -l zh_Hans -l en --ignore=.venv --ignore=var --ignore=tests --ignore=bench
	$(PY) scripts/fill_zh.py

check-deploy: install
	APP_ENV=production SECRET_KEY=$$($(PY) -c 'import secrets;print(secrets.token_urlsafe(60))') \
	FIELD_ENCRYPTION_KEYS=$$($(PY) -c 'from cryptography.fernet import Fernet;print(Fernet.generate_key().decode())') \
	SITE_URL=https://chat.example.com $(PY) manage.py check --deploy --fail-level WARNING

clean:
	rm -rf $(VENV) var/static
