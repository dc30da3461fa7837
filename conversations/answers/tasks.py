"""Celery tasks of the answer core: vision answers, conversation titles and the reaper (beat)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from celery import shared_task
from celery.signals import worker_shutting_down

from conversations.answers import drain, titles
from conversations.answers.reaper import reap_and_announce
from conversations.answers.runner import run_generation


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
    asyncio.run(_generate_until_drained(message_id, language))


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
    asyncio.run(titles.write_title(message_id, language))


@worker_shutting_down.connect
def _drain_on_warm_shutdown(**kwargs: Any) -> None:
    drain.announce_worker_shutdown()


@shared_task(name="conversations.reap_stale_generations", ignore_result=True)
def reap_stale_generations() -> int:
    return asyncio.run(reap_and_announce())
