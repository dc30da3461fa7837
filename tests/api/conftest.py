"""API fixtures: a daphne server whose SITE_URL is its own address, and openai clients.

DashScope fetches images from SITE_URL (signed URLs), so the server must know its own port
before it starts: `ApiServer` picks the port first. The emulator fixtures are the chat tests'.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from conversations.api import tokens
from tests.conftest import ARTIFACTS, ROOT, ServerProcess, child_env, free_port, wait_for_port


class ApiServer(ServerProcess):
    """daphne on the test database, with SITE_URL pointing at itself."""

    def __init__(self, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        environment = child_env(SITE_URL=self.url, PROVIDER_READ_TIMEOUT="2",
                                PROVIDER_CONNECT_TIMEOUT="2", **env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
             "chatsite.asgi:application"],
            cwd=ROOT, env=environment, stdout=self._log, stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.proc)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # Personas are created per test and never sign in with their password here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session")
def api_server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[ApiServer]:
    with django_db_blocker.unblock():
        server = ApiServer(ARTIFACTS / "logs" / "daphne-api.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def limited_server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[ApiServer]:
    """A second server allowing 2 answers a minute per user."""
    with django_db_blocker.unblock():
        server = ApiServer(ARTIFACTS / "logs" / "daphne-api-limited.log",
                           RATE_LIMIT_PER_MINUTE="2")
    yield server
    server.stop()


def openai_client(server: ApiServer, secret: str) -> OpenAI:
    # No retries: every request in a test is exactly one request to our server.
    return OpenAI(base_url=f"{server.url}/v1", api_key=secret, max_retries=0, timeout=30)


@pytest.fixture
def make_token() -> Callable[..., str]:
    def make(user: Any, name: str = "tests") -> str:
        return tokens.create_token(user, name).secret

    return make


@pytest.fixture
def api(api_server: ApiServer, owner: Any, make_token: Callable[..., str],
        request: pytest.FixtureRequest) -> OpenAI:
    """The owner's openai client against the API server, providers on the emulator."""
    request.getfixturevalue("emulated")
    return openai_client(api_server, make_token(owner))
