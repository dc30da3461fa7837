"""Shared fixtures: personas, a real daphne server process, and headless Chromium."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from providers.emulators import Credentials, EmulatorServer
from tests.support import point_providers_at, seed_catalogue

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
REQUIRE_BROWSER = os.environ.get("REQUIRE_BROWSER") == "1"
PASSWORD = "correct-horse-battery-staple"


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = [f"database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}, "
             f"redis: {'yes' if settings.REDIS_URL else 'no'}"]
    if not Path(CHROMIUM).exists():
        lines.append(
            f"browser tests: no Chromium at {CHROMIUM}; they are "
            + ("FAILING (REQUIRE_BROWSER=1)" if REQUIRE_BROWSER else "skipped")
        )
    return lines


@pytest.fixture(scope="session")
def django_db_modify_db_settings() -> None:
    """On PostgreSQL, a larger pool for the test process only.

    Async tests (channels' communicators on pytest-asyncio's loops) run database calls in
    contexts that end without giving their pooled connection back: about two per socket test.
    The server processes the tests start keep the product's own pool size.
    """
    options = settings.DATABASES["default"].get("OPTIONS", {})
    if "pool" in options:
        options["pool"]["max_size"] = max(options["pool"]["max_size"], 50)


@pytest.fixture(autouse=True)
def _reset_bootstrap_cache() -> Iterator[None]:
    from chatsite import bootstrap

    bootstrap.reset_cache()
    yield
    bootstrap.reset_cache()


@pytest.fixture(autouse=True)
def _no_generated_titles(settings: Any) -> None:
    """Off unless a test turns it on (see child_env)."""
    settings.GENERATED_TITLES = False


# --- personas -------------------------------------------------------------------------------
@pytest.fixture
def owner(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("alice", "alice@example.com", PASSWORD)


@pytest.fixture
def member(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("bob", "bob@example.com", PASSWORD)


@pytest.fixture
def outsider(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("charlie", "charlie@example.com", PASSWORD)


@pytest.fixture
def admin_user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_superuser("root", "root@example.com", PASSWORD)


# --- a real server process ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url_for_current_test_db() -> str:
    """The URL of the database the test session uses, for child processes."""
    from django.db import connection

    params = connection.settings_dict
    if params["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{params['NAME']}"
    user = params.get("USER") or ""
    auth = f"{user}@" if user else ""
    return (f"postgres://{auth}{params.get('HOST') or '127.0.0.1'}:{params.get('PORT') or 5432}"
            f"/{params['NAME']}")


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    # Generated titles are a model call after each first answer; tests that count calls or
    # ledger rows would see them, so they are on only where a test asks (tests/answers/
    # test_titles.py, tests/e2e/test_titles_browser.py).
    env.update({"DATABASE_URL": database_url_for_current_test_db(), "DEBUG": "0",
                "PYTHONUNBUFFERED": "1", "GENERATED_TITLES": "0"})
    env.update(extra)
    return env


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


class ServerProcess:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Its pages open websockets from their own origin, which must be SITE_URL's.
        env = {"SITE_URL": self.url, **env}
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
             "chatsite.asgi:application"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.proc)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


@pytest.fixture(scope="session")
def live_app(django_db_setup: Any, django_db_blocker: Any) -> Iterator[ServerProcess]:
    """daphne serving chatsite.asgi on the test database (use with transactional_db)."""
    with django_db_blocker.unblock():
        env = child_env()
    server = ServerProcess(env, ARTIFACTS / "logs" / "daphne-live-app.log")
    yield server
    server.stop()


class WorkerProcess:
    """A real `celery worker` on the test database and the configured Redis."""

    def __init__(self, env: dict[str, str], log_path: Path, name: str = "w1") -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.name = f"{name}@{socket.gethostname()}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "chatsite", "worker", "--loglevel=INFO",
             "--concurrency=2", "--without-gossip", "--without-mingle", "-n", self.name],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"celery worker exited early; see {self.log_path}")
            if b"ready." in self.log_path.read_bytes():
                return
            time.sleep(0.2)
        raise RuntimeError(f"celery worker not ready after {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Any]:
    """A real worker process when REDIS_URL is set; None on the embedded defaults."""
    if not settings.REDIS_URL:
        yield None
        return
    with django_db_blocker.unblock():
        env = child_env()
    worker = WorkerProcess(env, ARTIFACTS / "logs" / "celery-worker.log")
    yield worker
    worker.stop()


# --- headless Chromium ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        message = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if REQUIRE_BROWSER:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread; the test's own
    # ORM calls are still synchronous, so allow them while the browser lives.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as pw:
        instance = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage"],
        )
        yield instance
        instance.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.console_errors = errors  # type: ignore[attr-defined]
    yield pg
    context.close()


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# --- the provider emulator ------------------------------------------------------------------
@pytest.fixture(scope="session")
def chat_emulator() -> Iterator[EmulatorServer]:
    server = EmulatorServer(host="127.0.0.1", port=0, credentials=Credentials())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def emulated(transactional_db: Any, chat_emulator: EmulatorServer, settings: Any) -> EmulatorServer:
    """Providers point at the emulator; short timeouts so stall tests stay fast."""
    chat_emulator.reset()
    from django.core.cache import cache

    cache.clear()  # Qianfan tokens cached by an earlier test died with the emulator reset
    seed_catalogue()
    settings.PROVIDER_READ_TIMEOUT = 1.0
    settings.PROVIDER_CONNECT_TIMEOUT = 2.0
    point_providers_at(chat_emulator)
    return chat_emulator
