"""With Redis, Celery beat schedules the retention run and a real worker process applies it.

The worker test needs the PostgreSQL + Redis configuration (REDIS_URL set), like
tests/answers/test_celery_vision.py; the schedule is checked on every configuration.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from chatsite.celery import app
from conversations.models import Conversation
from conversations.retention import services
from conversations.retention.tasks import TASK_NAME
from tests.retention.conftest import DAY, chat_at


def test_beat_runs_the_retention_task_at_its_interval() -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["apply-retention"]
    assert entry["task"] == TASK_NAME
    assert entry["schedule"] == float(settings.RETENTION_INTERVAL_SECONDS)
    app.loader.import_default_modules()
    assert TASK_NAME in app.tasks


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not settings.REDIS_URL, reason=(
    "needs REDIS_URL (a real broker and Celery workers): runs in the PostgreSQL + Redis CI "
    "configuration"))
def test_a_real_worker_applies_the_policy_sent_by_beat(celery_worker_process: Any,
                                                       owner: Any) -> None:
    services.set_site_period(30)
    old = chat_at(owner, timezone.now() - 40 * DAY, "old")
    young = chat_at(owner, timezone.now() - 5 * DAY, "young")
    app.send_task(TASK_NAME)  # what beat sends
    deadline = time.monotonic() + 60
    while Conversation.objects.filter(pk=old.pk).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Conversation.objects.filter(pk=old.pk).exists()
    assert Conversation.objects.filter(pk=young.pk).exists()
