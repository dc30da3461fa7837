"""Celery tasks of the answer core: vision answers and the reaper (beat)."""

from __future__ import annotations

import asyncio

from celery import shared_task

from conversations.answers.reaper import reap_and_announce
from conversations.answers.runner import run_generation


@shared_task(name="conversations.generate_answer", acks_late=True,
             reject_on_worker_lost=False, ignore_result=True)
def generate_answer(message_id: str) -> None:
    """Generate one answer attempt. Idempotent: a redelivered task finds it already claimed.

    A worker killed mid-answer is not retried (reject_on_worker_lost=False acknowledges the
    message): the reaper marks the answer interrupted and keeps the partial text, so the
    provider is never called twice for one attempt (F12, F13).
    """
    asyncio.run(run_generation(message_id))


@shared_task(name="conversations.reap_stale_generations", ignore_result=True)
def reap_stale_generations() -> int:
    return asyncio.run(reap_and_announce())
