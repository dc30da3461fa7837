"""Celery task of the retention room: the periodic run (beat with Redis; without Redis the
server process runs it on a timer, answers/jobs.py, by this task's name)."""

from __future__ import annotations

from celery import shared_task

from conversations.retention.run import apply_retention

TASK_NAME = "conversations.apply_retention"


@shared_task(name=TASK_NAME, ignore_result=True)
def apply_retention_task() -> str:
    return str(apply_retention())
