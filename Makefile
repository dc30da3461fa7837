# Two commands matter: `make run` and `make test`. Everything else is a building block.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The slowest tests are listed at the end of every run: CI has a time budget.
PYTEST_ARGS ?= --durations=25
PIP := $(VENV)/bin/pip
PORT ?= 8000
HOST ?= 127.0.0.1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run demo test install install-dev migrate assets worker beat emulators lint typecheck messages check-deploy bench screenshots clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The stamp files make a second `make run` skip installation entirely.
# pip's own chatter (setuptools deprecation notices of an editable install) goes to a log that
# is shown only when the installation fails.
$(VENV)/.installed: pyproject.toml | $(PY)
	@echo "Installing Llama Chat into $(VENV) (once)..."
	@mkdir -p var && $(PIP) install -q -e . > var/install.log 2>&1 || { cat var/install.log; exit 1; }
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	@echo "Installing Llama Chat and its test tools into $(VENV) (once)..."
	@mkdir -p var && $(PIP) install -q -e ".[dev]" > var/install.log 2>&1 || { cat var/install.log; exit 1; }
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

migrate: install
	@$(PY) manage.py migrate --noinput -v 0

assets: install
	@$(PY) manage.py compile_translations > /dev/null
	@$(PY) manage.py collectstatic --noinput -v 0

# scripts/serve.py syncs the providers, starts daphne and prints one line once it listens
# (with a hint to try `make demo` when no provider has keys). Ctrl-C drains for 5 s.
run: install migrate assets
	@$(PY) scripts/serve.py --host $(HOST) --port $(PORT)

# The app on the local provider emulators: every model answers without real keys. The
# emulators' fake credentials and the markers that script an answer are printed at start.
EMULATOR_PORT ?= 9100
demo: install migrate assets
	@$(PY) scripts/serve.py --demo --host $(HOST) --port $(PORT) --emulator-port $(EMULATOR_PORT)

# axe-core for the accessibility browser tests (package.json pins it; nothing here is served).
# Without npm the accessibility tests skip (or fail with REQUIRE_BROWSER=1, as in CI).
node_modules/.installed: package.json package-lock.json
	@if command -v npm >/dev/null; then npm ci --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the accessibility tests need it (apt-get install npm)"; fi

test: install-dev node_modules/.installed
	$(PY) manage.py compile_translations
	$(PY) -m pytest $(PYTEST_ARGS)

# The README's pictures of the chat page, taken by a browser test (CJK fonts make the Chinese one
# readable: apt-get install fonts-wqy-microhei fonts-noto-color-emoji).
screenshots: install-dev
	$(PY) manage.py compile_translations
	SCREENSHOTS_DIR=docs/screenshots $(PY) -m pytest tests/e2e/test_screenshots.py -q

bench: install-dev
	$(PY) bench/run.py $(BENCH_ARGS)

# Our /v1 against Open WebUI on the same stream (bench/peer.py). Optional, never in CI or
# `make test`: it installs Open WebUI (several GiB) from the package index into its own
# virtualenv, bench/.peer-venv (git-ignored), once per PEER_VERSION.
.PHONY: bench-peer
PEER_VENV := bench/.peer-venv
PEER_VERSION ?= 0.12.4
$(PEER_VENV)/.installed-$(PEER_VERSION):
	@test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	@echo "Installing open-webui==$(PEER_VERSION) into $(PEER_VENV) (once; several minutes)..."
	@mkdir -p var && $(PEER_VENV)/bin/pip install -q "open-webui==$(PEER_VERSION)" \
		> var/peer-install.log 2>&1 || { tail -40 var/peer-install.log; exit 1; }
	@touch $@

bench-peer: install-dev $(PEER_VENV)/.installed-$(PEER_VERSION)
	$(PY) bench/peer.py $(PEER_ARGS)

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
