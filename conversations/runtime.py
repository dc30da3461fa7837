"""Where in-process jobs run: the server's own event loop.

Text answers (and, without Redis, vision answers) run as asyncio tasks on daphne's loop, the
loop the consumers and the in-memory channel layer live on. Sync views run in worker
threads, so they hand coroutines over with `submit`. Outside a server (management commands,
the sync test client) there is no captured loop and the job runs to completion inline.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import DatabaseSyncToAsync

log = logging.getLogger(__name__)

_loop: asyncio.AbstractEventLoop | None = None
_background: set[asyncio.Task[Any]] = set()
_periodic_started = False


def capture(loop: asyncio.AbstractEventLoop) -> None:
    global _loop
    if _loop is not loop:
        _loop = loop
        _start_periodic(loop)


def server_loop() -> asyncio.AbstractEventLoop | None:
    if _loop is not None and _loop.is_running() and not _loop.is_closed():
        return _loop
    return None


def off_loop(func: Any) -> Any:
    """`func` as a coroutine run on the loop's thread pool.

    Not asgiref's default single "thread-sensitive" thread: every consumer's and every
    runner's database call would queue there behind each other (the first database write of
    a new answer waited behind unrelated work). These calls are independent autocommit
    statements, so any thread will do; connections are closed around each call.
    """
    return DatabaseSyncToAsync(func, thread_sensitive=False)


def submit(func: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """Run `func(*args)` on the server loop, detached from the caller (fire and forget)."""
    loop = server_loop()
    if loop is None:
        async_to_sync(func)(*args)
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        _spawn(func(*args))
    else:
        loop.call_soon_threadsafe(lambda: _spawn(func(*args)))


def _spawn(coro: Awaitable[Any]) -> None:
    # A fresh context: the job must not inherit the request's asgiref thread executor, which
    # is shut down when the request ends ("CurrentThreadExecutor already quit").
    task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
    _background.add(task)
    task.add_done_callback(_finished)


def _finished(task: asyncio.Task[Any]) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("background job failed: %s", type(task.exception()).__name__,
                  exc_info=task.exception())


def _start_periodic(loop: asyncio.AbstractEventLoop) -> None:
    global _periodic_started
    if _periodic_started:
        return
    _periodic_started = True
    from conversations.answers.generation import reaper_loop

    loop.call_soon_threadsafe(lambda: _spawn(reaper_loop()))
    from django.conf import settings

    if not settings.REDIS_URL:  # with Redis, Celery beat runs the cleanup
        loop.call_soon_threadsafe(lambda: _spawn(_cleanup_loop(
            settings.CLEANUP_INTERVAL_SECONDS)))


async def _cleanup_loop(interval: float) -> None:
    from channels.db import database_sync_to_async

    from conversations.images.attachments import cleanup

    while True:
        await asyncio.sleep(interval)
        try:
            report = await database_sync_to_async(cleanup)()
            log.info("image cleanup: %s", report)
        except Exception:
            log.warning("image cleanup failed", exc_info=True)


class CaptureLoopMiddleware:
    """ASGI middleware: remember the server's event loop on the first connection."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        if _loop is None:
            capture(asyncio.get_running_loop())
        return await self.app(scope, receive, send)
