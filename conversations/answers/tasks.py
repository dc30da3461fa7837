"""Celery tasks of the answer core: vision answers, conversation titles and the reaper (beat)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Coroutine
from typing import Any, TypeVar

from celery import shared_task
from celery.signals import (
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutting_down,
)

from chatsite.heap import freeze_startup_heap
from conversations.answers import drain, titles
from conversations.answers.reaper import reap_and_announce
from conversations.answers.runner import run_generation
from providers import pool

T = TypeVar("T")
_runner: asyncio.Runner | None = None
_in_worker_process = False


@worker_process_init.connect
def _use_one_loop(**kwargs: Any) -> None:
    """A worker's child process runs every task on one event loop that lives as long as the
    process, so its vendor connections stay warm between answers (providers/pool.py)."""
    global _in_worker_process
    _in_worker_process = True


@worker_ready.connect  # the main process, which runs the tasks with the threads or solo pool
@worker_process_init.connect  # a prefork child
def _freeze_worker_heap(**kwargs: Any) -> None:
    """A worker keeps what it started with out of the collector's full passes, as daphne does
    (chatsite/heap.py)."""
    freeze_startup_heap()


@worker_process_shutdown.connect
def _close_loop(**kwargs: Any) -> None:
    global _runner
    if _runner is not None:
        with contextlib.suppress(Exception):
            _runner.run(pool.aclose_all())
        _runner.close()
        _runner = None


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)`, on the process's persistent loop inside a worker process."""
    global _runner
    if not _in_worker_process:
        return asyncio.run(coro)
    if _runner is None:
        _runner = asyncio.Runner()
        pool.keep_warm(_runner.get_loop())
    # A fresh copy of the context per task, as asyncio.run gives: nothing set by one task
    # (asgiref's locals, for one) leaks into the next.
    return _runner.run(coro, context=contextvars.copy_context())


@shared_task(name="conversations.generate_answer", acks_late=True,
             reject_on_worker_lost=False, ignore_result=True)
def generate_answer(message_id: str, language: str = "") -> None:
    """Generate one answer attempt. Idempotent: a redelivered task finds it already claimed.

    A worker killed mid-answer is not retried (reject_on_worker_lost=False acknowledges the
    message): the reaper marks the answer interrupted and keeps the partial text, so the
    provider is never called twice for one attempt (F12, F13).

    On a warm shutdown the answer may finish for DRAIN_SECONDS; then it is saved as
    interrupted, with its text, and the task ends (drain.py).
    """
    _run(_generate_until_drained(message_id, language))


async def _generate_until_drained(message_id: str, language: str = "") -> None:
    task = asyncio.ensure_future(run_generation(message_id, language))
    while not task.done():
        await asyncio.wait({task}, timeout=0.5)
        if not task.done() and await drain.worker_deadline_passed():
            await drain.interrupt_running()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@shared_task(name=titles.TASK_NAME, ignore_result=True)
def generate_title(message_id: str, language: str = "") -> None:
    """The title of a conversation after its first answer (answers/titles.py). Idempotent:
    a second delivery finds the title's ledger row and does nothing."""
    _run(titles.write_title(message_id, language))


@worker_shutting_down.connect
def _drain_on_warm_shutdown(**kwargs: Any) -> None:
    drain.announce_worker_shutdown()


@shared_task(name="conversations.reap_stale_generations", ignore_result=True)
def reap_stale_generations() -> int:
    return _run(reap_and_announce())
