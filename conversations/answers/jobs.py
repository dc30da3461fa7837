"""Where an answer runs, and the periodic work of a server process.

Text answers run as asyncio tasks in the server process that accepted them (runtime.py).
Vision answers go to a Celery worker when Redis is configured (fitting and sending images is
slow); without Redis they run in-process too. Services call `start` after their transaction
committed; nothing else decides this.

A server process also runs the reaper from its first request on, and, without Redis (no
Celery beat), the image cleanup on a timer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.utils import translation

from conversations import runtime
from conversations.answers.reaper import reap_stale, reaper_loop
from conversations.answers.runner import run_generation
from conversations.answers.tasks import generate_answer
from conversations.images.attachments import cleanup
from conversations.models import Message

log = logging.getLogger(__name__)


def start(message: Message) -> None:
    """Start generating `message` (call after the transaction that created it committed)."""
    model = message.model
    # The asker's interface language (a service calls this in its request): the title that
    # follows a first answer uses it when the prompt's own language is unclear.
    language = translation.get_language() or ""
    if settings.REDIS_URL and model is not None and model.vision:
        generate_answer.delay(str(message.pk), language)
        return
    runtime.submit(run_generation, message.pk, language)


def start_periodic(loop: asyncio.AbstractEventLoop) -> None:
    """The reaper and, without Redis, the image cleanup, on the server's loop."""
    interval = float(settings.REAPER_INTERVAL_SECONDS)
    loop.call_soon_threadsafe(lambda: runtime.spawn(reaper_loop(interval)))
    if not settings.REDIS_URL:  # with Redis, Celery beat runs the cleanup
        interval = settings.CLEANUP_INTERVAL_SECONDS
        loop.call_soon_threadsafe(lambda: runtime.spawn(_cleanup_loop(interval)))


async def _cleanup_loop(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            report = await database_sync_to_async(cleanup)()
            log.info("image cleanup: %s", report)
        except Exception:
            log.warning("image cleanup failed", exc_info=True)


def start_reaper_thread() -> threading.Thread:
    """Reap from the moment the process starts, before any request (F16): a server restarted
    after a crash marks the answers the dead process left `streaming`, visitor or not.

    Until the first request shows the server's loop, a thread sweeps the database (no viewer
    can be connected to this process yet, so there is nobody to tell in-process); from then on
    the loop's own reaper takes over and the thread ends.
    """
    interval = float(settings.REAPER_INTERVAL_SECONDS)

    def sweep() -> None:
        while runtime.server_loop() is None:
            try:
                reaped = reap_stale()
                if reaped:
                    log.info("reaper (before the first request): %d answer(s) interrupted",
                             len(reaped))
            except Exception:
                log.warning("reaper pass failed", exc_info=True)
            finally:
                close_old_connections()
            time.sleep(interval)

    thread = threading.Thread(target=sweep, name="reaper-before-first-request", daemon=True)
    thread.start()
    return thread


class CaptureLoopMiddleware:
    """ASGI middleware: remember the server's event loop on the first connection, and start
    the periodic work on it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        if runtime.server_loop() is None:
            loop = asyncio.get_running_loop()
            if runtime.capture(loop):
                start_periodic(loop)
        return await self.app(scope, receive, send)
