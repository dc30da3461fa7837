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
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import DatabaseSyncToAsync

from providers import pool

log = logging.getLogger(__name__)

_loop: asyncio.AbstractEventLoop | None = None
OFF_LOOP_THREADS = 64
_background: set[asyncio.Task[Any]] = set()


def capture(loop: asyncio.AbstractEventLoop) -> bool:
    """Remember the server's loop (the first one only); True when this call captured it."""
    global _loop
    if _loop is not None:
        return False
    _loop = loop
    pool.keep_warm(loop)  # this loop lives as long as the process: vendor connections stay warm
    # `off_loop` runs on the loop's default executor, which asyncio sizes at cpu_count + 4
    # threads (6 on two cores): 64 answers starting within a second, each claiming and reading
    # its history there beside every stream's partial saves, queued for half a second behind
    # those six threads (issue 16). The database pool, not this, bounds real concurrency.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=OFF_LOOP_THREADS,
                                                 thread_name_prefix="off-loop"))
    return True


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


def submit(func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
    """Run `func(*args)` on the server loop, detached from the caller (fire and forget)."""
    loop = server_loop()
    if loop is None:
        async_to_sync(func)(*args)
        return
    if running_loop() is loop:
        _spawn(func(*args))
    else:
        loop.call_soon_threadsafe(lambda: _spawn(func(*args)))


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The loop running in this thread, if any (code on it must not block on the database)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def spawn(coro: Coroutine[Any, Any, Any]) -> None:
    """Run `coro` as a task of the running loop, kept alive and its failure logged."""
    _spawn(coro)


def _spawn(coro: Coroutine[Any, Any, Any]) -> None:
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
