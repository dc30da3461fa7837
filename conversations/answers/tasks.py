"""Celery tasks: vision answers and periodic maintenance."""

from __future__ import annotations

import asyncio

from celery import shared_task


@shared_task(name="conversations.generate_answer", acks_late=True,
             reject_on_worker_lost=False, ignore_result=True)
def generate_answer(message_id: str) -> None:
    """Generate one answer attempt. Idempotent: a redelivered task finds it already claimed.

    A worker killed mid-answer is not retried (reject_on_worker_lost=False acknowledges the
    message): the reaper marks the answer interrupted and keeps the partial text, so the
    provider is never called twice for one attempt (F12, F13).
    """
    from conversations.answers.generation import run_generation

    asyncio.run(run_generation(message_id))


@shared_task(name="conversations.reap_stale_generations", ignore_result=True)
def reap_stale_generations() -> int:
    from conversations.answers.generation import reap_and_announce

    return asyncio.run(reap_and_announce())


@shared_task(name="conversations.cleanup_images", ignore_result=True)
def cleanup_images() -> str:
    from conversations.images.attachments import cleanup

    return str(cleanup())
