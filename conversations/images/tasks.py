"""Celery tasks of the images room: the periodic cleanup (beat)."""

from __future__ import annotations

from celery import shared_task

from conversations.images.attachments import cleanup


@shared_task(name="conversations.cleanup_images", ignore_result=True)
def cleanup_images() -> str:
    return str(cleanup())
