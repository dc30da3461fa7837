"""Fixtures for provider tests: one emulator per session, configs pointing at it, an image host.

`emulator` is the session's EmulatorServer, reset before each test. `provider_configs` maps a
provider kind to a ProviderConfig with the emulator's credentials, short timeouts and near-zero
retry backoff so the folder stays fast.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import pytest_asyncio

from providers.base import (
    ChatRequest,
    Delta,
    Finish,
    ImagePart,
    ProviderClient,
    ProviderConfig,
    ProviderError,
)
from providers.emulators import Credentials, EmulatorServer
from providers.qianfan import InMemoryTokenCache
from providers.registry import get_client

# A valid 1x1 PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d4944415478da63f8cfc0f01f0005000201a0e8a4a20000000049454e44ae426082"
)

FAST_OPTIONS: dict[str, Any] = {
    "retry_base_delay": 0.005,
    "retry_max_delay": 0.02,
    "max_retry_after": 2.0,
}


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorServer]:
    server = EmulatorServer(host="127.0.0.1", port=0, credentials=Credentials())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def emulator(emulator_server: EmulatorServer) -> EmulatorServer:
    emulator_server.reset()
    return emulator_server


def configs_for(server: EmulatorServer) -> dict[str, ProviderConfig]:
    creds = server.credentials
    urls = server.base_urls
    common: dict[str, Any] = {"connect_timeout": 2.0, "read_timeout": 5.0}
    return {
        "cloudflare": ProviderConfig(
            kind="cloudflare",
            base_url=urls["cloudflare"],
            credentials={
                "account_id": creds.cloudflare_account_id,
                "api_token": creds.cloudflare_api_token,
            },
            options=dict(FAST_OPTIONS),
            **common,
        ),
        "dashscope": ProviderConfig(
            kind="dashscope",
            base_url=urls["dashscope"],
            credentials={"api_key": creds.dashscope_api_key},
            options=dict(FAST_OPTIONS),
            **common,
        ),
        "qianfan": ProviderConfig(
            kind="qianfan",
            base_url=urls["qianfan"],
            credentials={"api_key": creds.qianfan_ak, "secret_key": creds.qianfan_sk},
            options=dict(FAST_OPTIONS),
            **common,
        ),
    }


@pytest.fixture
def provider_configs(emulator: EmulatorServer) -> dict[str, ProviderConfig]:
    return configs_for(emulator)


class _PngHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        return


@pytest.fixture(scope="session")
def image_url() -> Iterator[str]:
    """A signed-URL stand-in: a tiny local server answering every GET with the PNG."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PngHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/media/signed/cat.png?sig=abc"
    server.shutdown()
    server.server_close()


@pytest.fixture
def image(image_url: str) -> ImagePart:
    return ImagePart(data=PNG, mime_type="image/png", url=image_url)


@dataclass
class Outcome:
    """What a consumer saw: the deltas' text, the Finish (on success) or the error."""

    text: str = ""
    deltas: list[str] = field(default_factory=list)
    finish: Finish | None = None
    error: ProviderError | None = None
    finishes: int = 0


async def drain(client: ProviderClient, request: ChatRequest) -> Outcome:
    outcome = Outcome()
    try:
        async for item in client.stream(request):
            assert outcome.finish is None, "nothing may follow the Finish"
            if isinstance(item, Delta):
                assert item.text, "empty deltas are never yielded"
                outcome.deltas.append(item.text)
            else:
                outcome.finish = item
                outcome.finishes += 1
    except ProviderError as error:
        outcome.error = error
    outcome.text = "".join(outcome.deltas)
    return outcome


ClientFactory = Callable[..., ProviderClient]


@pytest_asyncio.fixture
async def make_client(
    provider_configs: dict[str, ProviderConfig],
) -> AsyncIterator[ClientFactory]:
    """`make_client(kind, **config_changes)`; every client is closed after the test."""
    made: list[ProviderClient] = []

    def factory(kind: str, token_cache: Any = None, **changes: Any) -> ProviderClient:
        config = replace(provider_configs[kind], **changes)
        if kind == "qianfan" and token_cache is None:
            token_cache = InMemoryTokenCache()
        client = get_client(config, token_cache=token_cache)
        made.append(client)
        return client

    yield factory
    for client in made:
        await client.aclose()


Drain = Callable[[ProviderClient, ChatRequest], Awaitable[Outcome]]


@pytest.fixture
def run() -> Drain:
    return drain
