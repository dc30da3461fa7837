"""Warm vendor connections: the emulator keeps connections alive like a vendor's server, and
our clients reuse them in a long-lived loop (providers/pool.py).

The emulator counts TCP connections per vendor (`EmulatorServer.connections`), so reuse is a
count, never a time. Both readings of the emulator's `keep_alive` switch are tested, and so is a
server that closes an idle connection (its idle timeout is a figure no vendor documents).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
import pytest_asyncio

from providers import pool
from providers.base import ChatRequest, Message, ProviderConfig
from providers.catalogue import CF_TEXT_MODEL, QIANFAN_MODEL
from providers.emulators import Credentials, EmulatorServer
from providers.qianfan import InMemoryTokenCache
from providers.registry import get_client
from tests.providers.conftest import configs_for, drain

ANSWERS = 50


def ask(model: str, text: str = "Hello") -> ChatRequest:
    return ChatRequest(model, (Message("user", text),))


@pytest.fixture(scope="module")
def closing_server() -> Iterator[EmulatorServer]:
    """An emulator with keep-alive switched off: every response says Connection: close."""
    server = EmulatorServer(credentials=Credentials(), keep_alive=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def impatient_server() -> Iterator[EmulatorServer]:
    """An emulator that closes a connection idle for 0.2 s."""
    server = EmulatorServer(credentials=Credentials(), keep_alive_idle=0.2)
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture
async def warm_loop() -> AsyncIterator[None]:
    """This test's loop pools clients, as the server's loop does; closed afterwards."""
    pool.keep_warm()
    yield
    await pool.aclose_all()


async def answer_many(config: ProviderConfig, model: str, count: int,
                      token_cache: Any = None) -> list[str]:
    texts = []
    for index in range(count):
        client = get_client(config, token_cache=token_cache)
        try:
            outcome = await drain(client, ask(model, f"Question {index}"))
        finally:
            await client.aclose()
        assert outcome.error is None, outcome.error
        texts.append(outcome.text)
    return texts


def cf_posts(server: EmulatorServer, count: int, **headers: str) -> list[httpx.Response]:
    """`count` plain Cloudflare calls to `server` in a row, through one httpx client."""
    config = configs_for(server)["cloudflare"]
    url = f"{config.base_url}/accounts/{config.credentials['account_id']}/ai/run/{CF_TEXT_MODEL}"
    auth = {"Authorization": f"Bearer {config.credentials['api_token']}", **headers}
    with httpx.Client() as http:
        return [http.post(url, json={"prompt": f"Hi {i}"}, headers=auth) for i in range(count)]


# --- the emulator -------------------------------------------------------------------------------
def test_the_emulator_serves_many_requests_on_one_kept_alive_connection(
        emulator: EmulatorServer) -> None:
    replies = cf_posts(emulator, 5)
    assert [r.status_code for r in replies] == [200] * 5
    assert all(r.headers.get("connection") != "close" for r in replies)
    assert emulator.connections("cloudflare") == 1 and emulator.calls("cloudflare") == 5


def test_with_keep_alive_off_the_emulator_closes_after_every_response(
        closing_server: EmulatorServer) -> None:
    closing_server.reset()
    replies = cf_posts(closing_server, 3)
    assert [r.headers.get("connection") for r in replies] == ["close"] * 3
    assert closing_server.connections("cloudflare") == 3


def test_a_request_asking_to_close_gets_its_connection_closed(emulator: EmulatorServer) -> None:
    replies = cf_posts(emulator, 2, Connection="close")
    assert [r.headers.get("connection") for r in replies] == ["close", "close"]
    assert emulator.connections("cloudflare") == 2


def test_the_control_endpoint_reports_connections_per_vendor(emulator: EmulatorServer) -> None:
    reply = httpx.get(f"{emulator.url}/_emulator/requests").json()
    assert set(reply["connections"]) == {"cloudflare", "dashscope", "qianfan", "total"}


# --- our clients ----------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_fifty_sequential_answers_in_a_warm_loop_use_one_connection(
        emulator: EmulatorServer, provider_configs: dict[str, ProviderConfig],
        warm_loop: None) -> None:
    texts = await answer_many(provider_configs["cloudflare"], CF_TEXT_MODEL, ANSWERS)
    assert len(texts) == ANSWERS and all(texts)
    assert emulator.calls("cloudflare") == ANSWERS
    assert emulator.connections("cloudflare") == 1
    assert pool.pooled_clients() == 1


@pytest.mark.asyncio
async def test_qianfan_token_fetch_and_answers_share_one_connection(
        emulator: EmulatorServer, provider_configs: dict[str, ProviderConfig],
        warm_loop: None) -> None:
    await answer_many(provider_configs["qianfan"], QIANFAN_MODEL, 10,
                      token_cache=InMemoryTokenCache())
    tokens = [r for r in emulator.requests if r.vendor == "qianfan" and r.endpoint == "token"]
    assert len(tokens) == 1 and emulator.calls("qianfan") == 10
    assert emulator.connections("qianfan") == 1


@pytest.mark.asyncio
async def test_a_changed_key_gets_a_new_client_and_the_old_one_is_not_reused(
        emulator: EmulatorServer, provider_configs: dict[str, ProviderConfig],
        warm_loop: None) -> None:
    config = provider_configs["cloudflare"]
    first = get_client(config)
    same = get_client(replace(config))
    rotated = get_client(replace(config, credentials={**config.credentials,
                                                      "api_token": "cf-emu-token-0002"}))
    assert first._http is same._http  # type: ignore[attr-defined]
    assert rotated._http is not first._http  # type: ignore[attr-defined]
    for client in (first, same, rotated):
        await client.aclose()
    assert not first._http.is_closed  # type: ignore[attr-defined]  # shared: stays warm


@pytest.mark.asyncio
async def test_outside_a_warm_loop_each_client_is_private_and_closed(
        emulator: EmulatorServer, provider_configs: dict[str, ProviderConfig]) -> None:
    client = get_client(provider_configs["cloudflare"])
    http = client._http  # type: ignore[attr-defined]
    await drain(client, ask(CF_TEXT_MODEL))
    await client.aclose()
    assert http.is_closed and pool.pooled_clients() == 0


@pytest.mark.asyncio
async def test_answers_still_work_when_the_server_closes_after_every_response(
        closing_server: EmulatorServer, warm_loop: None) -> None:
    closing_server.reset()
    config = configs_for(closing_server)["cloudflare"]
    texts = await answer_many(config, CF_TEXT_MODEL, 5)
    assert all(texts) and closing_server.connections("cloudflare") == 5


@pytest.mark.asyncio
async def test_an_idle_connection_the_server_closed_is_replaced_without_an_error(
        impatient_server: EmulatorServer, warm_loop: None) -> None:
    impatient_server.reset()
    config = configs_for(impatient_server)["cloudflare"]
    await answer_many(config, CF_TEXT_MODEL, 2)
    await asyncio.sleep(0.6)  # the server closes the idle connection after 0.2 s
    texts = await answer_many(config, CF_TEXT_MODEL, 2)
    assert all(texts) and impatient_server.calls("cloudflare") == 4
    assert impatient_server.connections("cloudflare") == 2


@pytest.mark.asyncio
async def test_a_dropped_stream_closes_its_connection_and_the_next_answer_reconnects(
        emulator: EmulatorServer, provider_configs: dict[str, ProviderConfig],
        warm_loop: None) -> None:
    config = provider_configs["cloudflare"]
    emulator.script("cloudflare", "drop-after n=2")
    client = get_client(config)
    broken = await drain(client, ask(CF_TEXT_MODEL))
    await client.aclose()
    assert broken.error is not None
    texts = await answer_many(config, CF_TEXT_MODEL, 3)
    assert all(texts) and emulator.connections("cloudflare") == 2
