"""A Celery worker process runs its tasks on one persistent event loop (answers/tasks.py), so
vendor connections stay warm between vision answers and titles, as they do in daphne.

The tasks' runner is driven here in-process, as a worker's child process drives it after its
`worker_process_init` signal; the real worker runs the same code in CI's PostgreSQL + Redis run
(every vision answer there goes through it).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterator
from typing import Any

import pytest

from conversations.answers import tasks
from providers.base import ChatRequest, Message
from providers.catalogue import CF_TEXT_MODEL
from providers.emulators import Credentials, EmulatorServer
from providers.models import Provider
from providers.registry import get_client


@pytest.fixture
def worker_child() -> Iterator[None]:
    """This process behaves as a worker's child until the test ends (then shuts down)."""
    tasks._use_one_loop()
    yield
    tasks._close_loop()
    tasks._in_worker_process = False


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    server = EmulatorServer(credentials=Credentials())
    server.start()
    yield server
    server.stop()


async def one_answer(emulator: EmulatorServer) -> tuple[int, str]:
    config = Provider(kind="cloudflare", base_url=emulator.base_urls["cloudflare"])
    config.set_credentials({"account_id": emulator.credentials.cloudflare_account_id,
                            "api_token": emulator.credentials.cloudflare_api_token})
    client = get_client(config.client_config())
    text = []
    try:
        async for item in client.stream(ChatRequest(CF_TEXT_MODEL, (Message("user", "Hi"),))):
            text.append(getattr(item, "text", ""))
    finally:
        await client.aclose()
    return id(asyncio.get_running_loop()), "".join(text)


def test_a_worker_process_keeps_one_loop_and_one_vendor_connection_across_tasks(
        worker_child: None, emulator: EmulatorServer) -> None:
    emulator.reset()
    runs = [tasks._run(one_answer(emulator)) for _ in range(5)]
    assert len({loop for loop, _ in runs}) == 1 and all(text for _, text in runs)
    assert emulator.calls("cloudflare") == 5 and emulator.connections("cloudflare") == 1


def test_outside_a_worker_each_task_gets_its_own_loop_and_connection(
        emulator: EmulatorServer) -> None:
    emulator.reset()
    runs: list[Any] = [tasks._run(one_answer(emulator)) for _ in range(3)]
    assert all(text for _, text in runs)
    assert emulator.connections("cloudflare") == 3


def test_nothing_one_task_sets_in_its_context_leaks_into_the_next(worker_child: None) -> None:
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="clean")

    async def set_it() -> str:
        marker.set("dirty")
        return marker.get()

    async def read_it() -> str:
        return marker.get()

    assert tasks._run(set_it()) == "dirty"
    assert tasks._run(read_it()) == "clean"
