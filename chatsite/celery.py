"""The Celery application: JSON only, bounded task time, tasks found in every app."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

app = Celery("chatsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # A vision answer can take minutes; a stuck one must not hold a worker forever.
    task_soft_time_limit=int(os.environ.get("CELERY_TASK_SOFT_TIME_LIMIT", "600")),
    task_time_limit=int(os.environ.get("CELERY_TASK_TIME_LIMIT", "660")),
    # Tasks are idempotent by attempt id, so late acknowledgement is safe and a task whose
    # worker died is delivered again (the task itself decides it was interrupted).
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    result_expires=3600,
    timezone=os.environ.get("TIME_ZONE", "UTC"),
)
# Tasks live beside the concern they serve (answers, images), not in one flat module.
app.autodiscover_tasks(["conversations.answers", "conversations.images",
                        "conversations.retention", "conversations.documents"])


@app.task(name="chatsite.ping")
def ping() -> str:
    """Round trip used by /healthz tests and operators to prove a worker answers."""
    return "pong"
