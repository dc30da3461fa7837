"""Request threads are reused between requests (chatsite/http_handler.py), one per request at
a time: counts of threads, never times."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest
from django.core.signals import request_started

from chatsite.asgi import application
from chatsite.http_handler import _ExecutorPool

pytestmark = pytest.mark.django_db(transaction=True)


async def get_many(paths: list[str], *, together: bool) -> list[int]:
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        if together:
            replies = await asyncio.gather(*(http.get(path) for path in paths))
        else:
            replies = [await http.get(path) for path in paths]
    return [reply.status_code for reply in replies]


def test_sequential_requests_run_on_one_reused_thread(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    threads: list[threading.Thread] = []  # held, so no two are ever the same object by reuse

    def seen(**kwargs: Any) -> None:  # Django sends request_started on the request's thread
        threads.append(threading.current_thread())

    request_started.connect(seen)
    try:
        statuses = asyncio.run(get_many(["/healthz", "/accounts/login/"] * 5, together=False))
    finally:
        request_started.disconnect(seen)
    assert all(status < 400 for status in statuses) and len(threads) == 10
    assert len(set(threads)) == 1 and threads[0] is not threading.main_thread()


def test_requests_in_flight_together_run_on_threads_of_their_own(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    threads: list[threading.Thread] = []

    def seen(**kwargs: Any) -> None:
        threads.append(threading.current_thread())

    request_started.connect(seen)
    try:
        statuses = asyncio.run(get_many(["/healthz"] * 4, together=True))
    finally:
        request_started.disconnect(seen)
    assert all(status < 400 for status in statuses) and len(threads) == 4
    assert len(set(threads)) >= 2  # concurrent requests do not queue behind one thread


def test_requests_in_flight_together_never_share_a_thread() -> None:
    pool = _ExecutorPool(max_idle=2)
    first, second = pool.acquire(), pool.acquire()
    assert first is not second
    pool.release(first)
    assert pool.acquire() is first  # reused once free
    third = pool.acquire()
    pool.release(first), pool.release(second), pool.release(third)
    assert pool.idle() == 2  # beyond max_idle an executor is shut down, not kept
