"""Where an answer runs, and the periodic work of a server process.

Text answers run as asyncio tasks in the server process that accepted them (runtime.py).
Vision answers go to a Celery worker when Redis is configured (fitting and sending images is
slow); without Redis they run in-process too. Services call `start` after their transaction
committed; nothing else decides this.

A server process also runs the reaper from its first request on, and, without Redis (no
Celery beat), the image cleanup and the retention run on timers.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone, translation

from chatsite.celery import app as celery_app
from conversations import runtime
from conversations.answers import runner
from conversations.answers.reaper import reap_stale, reaper_loop
from conversations.answers.runner import run_generation
from conversations.answers.tasks import generate_answer
from conversations.images.attachments import cleanup
from conversations.models import Message, MessageStatus
from providers.models import ModelConfig

log = logging.getLogger(__name__)
# The retention run (conversations/retention/tasks.py, a higher room: called by name).
RETENTION_TASK = "conversations.apply_retention"


def start(message: Message) -> None:
    """Start generating `message` (call after the transaction that created it committed)."""
    model = message.model
    # The asker's interface language (a service calls this in its request): the title that
    # follows a first answer uses it when the prompt's own language is unclear.
    language = translation.get_language() or ""
    if _for_worker(model):
        generate_answer.delay(str(message.pk), language)
        return
    handed = _for_runner(message)
    if not runs_in_request(model):
        # No server (inline), or called on a loop: the claim runs on the loop's thread pool.
        runtime.submit(run_generation, message.pk, language, handed)
        return
    # In a server, the posting thread claims the answer (the service stored it claimed:
    # `claim_at_insert`) and builds its request (a few ms of database reads it would otherwise
    # queue for on the loop's thread pool, beside the reply being rendered): the loop then
    # calls the vendor at once (issue 16).
    try:
        job = runner.claim(message.pk, handed)
    except Exception:  # the database went away: the loop tries again, the reaper after it
        log.warning("could not claim answer %s in the request; the loop will", message.pk,
                    exc_info=True)
        runtime.submit(run_generation, message.pk, language, handed)
        return
    runtime.submit(runner.run_claimed, job, language)


def _for_worker(model: ModelConfig | None) -> bool:
    """A vision answer goes to a Celery worker when Redis is configured."""
    return bool(settings.REDIS_URL) and model is not None and model.vision


def runs_in_request(model: ModelConfig | None) -> bool:
    """Whether `start`, called from this thread, claims an answer of `model` here and runs it
    on this server's loop: a server's request thread, and not an answer for a worker."""
    return (not _for_worker(model) and runtime.server_loop() is not None
            and runtime.running_loop() is None)


def claim_at_insert(answer: Message) -> None:
    """A new answer that `start` will claim in this thread is stored claimed: `streaming`, this
    process's runner, a heartbeat from now. The insert is the claim (the row exists nowhere
    else before the transaction commits), and the claim after the commit has no update of its
    own to make: one statement and one commit fewer per Send (issue 16). If the process dies
    before the answer starts, the reaper finds it by its heartbeat, as any answer it was
    writing. Elsewhere (a worker's vision answer, no server loop) it stays `queued`."""
    if runs_in_request(answer.model):
        answer.status = MessageStatus.STREAMING
        answer.runner = runner.runner_id()
        answer.heartbeat_at = timezone.now()


def _for_runner(message: Message) -> Message:
    """The runner's own copy of the message the service just stored, with what the service
    already read (its conversation, model and provider, its prompt): the claim then reads
    nothing back. A copy, because the request's thread goes on using its own object."""
    return copy.copy(message)


def start_periodic(loop: asyncio.AbstractEventLoop) -> None:
    """The reaper and, without Redis, the image cleanup, on the server's loop."""
    interval = float(settings.REAPER_INTERVAL_SECONDS)
    loop.call_soon_threadsafe(lambda: runtime.spawn(reaper_loop(interval)))
    if not settings.REDIS_URL:  # with Redis, Celery beat runs the cleanup
        interval = settings.CLEANUP_INTERVAL_SECONDS
        loop.call_soon_threadsafe(lambda: runtime.spawn(_cleanup_loop(interval)))
        every = float(settings.RETENTION_INTERVAL_SECONDS)
        loop.call_soon_threadsafe(lambda: runtime.spawn(_task_loop(RETENTION_TASK, every)))


async def _cleanup_loop(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            report = await database_sync_to_async(cleanup)()
            log.info("image cleanup: %s", report)
        except Exception:
            log.warning("image cleanup failed", exc_info=True)


def run_task_by_name(name: str) -> Any:
    """Run a Celery task of a higher room here and now, as beat would have it run (its module
    is found the way a worker finds it: Celery's autodiscovery)."""
    celery_app.loader.import_default_modules()
    return celery_app.tasks[name]()


async def _task_loop(name: str, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            result = await database_sync_to_async(run_task_by_name)(name)
            log.debug("%s: %s", name, result)  # the task logs what it changed
        except Exception:
            log.warning("%s failed", name, exc_info=True)


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
