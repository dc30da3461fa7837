"""Jobs run on a real Celery worker with Redis, and in-process on the embedded defaults."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings

from chatsite.celery import app, ping


@pytest.mark.django_db(transaction=True)
def test_a_job_round_trips_through_the_configured_runner(celery_worker_process: Any) -> None:
    assert ping.delay().get(timeout=30) == "pong"
    if settings.REDIS_URL:
        assert celery_worker_process is not None and celery_worker_process.proc.poll() is None
        replies = app.control.ping(timeout=5)
        assert any(celery_worker_process.name in reply for reply in replies)
    else:
        assert app.conf.task_always_eager is True


def test_the_celery_app_only_speaks_json() -> None:
    assert app.conf.task_serializer == "json"
    assert app.conf.accept_content == ["json"]
    assert app.conf.task_time_limit and app.conf.task_soft_time_limit
