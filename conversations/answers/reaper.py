"""The reaper: answers whose process went away are marked `interrupted`, their text kept.

A runner beats (saves its text or a heartbeat) at least every few seconds; an answer whose
beat is older than GENERATION_STALE_SECONDS, or that sat queued for QUEUED_STALE_SECONDS, has no
process left writing it (F12, F16). The pass runs in the server process (jobs.py) and on
Celery beat with Redis; two passes at once are harmless (each row is updated conditionally).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from conversations import events
from conversations.errors import REAPED
from conversations.models import Message, MessageStatus, UsageRecord
from conversations.runtime import off_loop

log = logging.getLogger(__name__)

QUEUED_STALE_SECONDS = 600
TITLE_STALE_SECONDS = 300  # a title call is given 30 s (answers/titles.py)
REAPED_MESSAGE = REAPED


def reap_stale(now: datetime | None = None) -> list[tuple[uuid.UUID, uuid.UUID, int]]:
    """Mark answers whose runner stopped making progress as interrupted (F12, F16).

    Returns (conversation id, message id, seq) for each one, so callers can broadcast.
    """
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.GENERATION_STALE_SECONDS)
    queued_stale = now - timedelta(seconds=QUEUED_STALE_SECONDS)
    condition = (Q(status=MessageStatus.STREAMING)
                 & (Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True))) | (
        Q(status=MessageStatus.QUEUED) & Q(created_at__lt=queued_stale))
    rows = list(Message.objects.filter(condition).values_list("conversation_id", "pk", "seq"))
    reaped = []
    for conversation_id, message_id, seq in rows:
        updated = Message.objects.filter(Q(pk=message_id) & condition).update(
            status=MessageStatus.INTERRUPTED, error_code="interrupted",
            error_message=REAPED_MESSAGE, updated_at=now)
        if updated:
            UsageRecord.objects.filter(message_id=message_id, finished_at__isnull=True).update(
                finished_at=now, status=MessageStatus.INTERRUPTED, error_code="interrupted")
            reaped.append((conversation_id, message_id, seq))
    # A title call whose process went away (a worker killed mid-call): its ledger row is
    # closed; the conversation keeps its first line (answers/titles.py).
    UsageRecord.objects.filter(
        purpose=UsageRecord.Purpose.TITLE, finished_at__isnull=True,
        started_at__lt=now - timedelta(seconds=TITLE_STALE_SECONDS)).update(
        finished_at=now, status=MessageStatus.INTERRUPTED, error_code="interrupted")
    return reaped


def _reap() -> list[tuple[uuid.UUID, events.Event]]:
    reaped = reap_stale()
    messages = Message.objects.in_bulk([message_id for _c, message_id, _s in reaped])
    return [(conversation_id, events.final_state_of(messages[message_id]))
            for conversation_id, message_id, _seq in reaped if message_id in messages]


async def reap_and_announce() -> int:
    reaped = await off_loop(_reap)()
    for conversation_id, event in reaped:
        await events.publish(events.conversation_group(conversation_id), event)
    return len(reaped)


async def reaper_loop(interval: float = 15.0) -> None:
    while True:
        try:
            await reap_and_announce()
        except Exception:
            log.warning("reaper pass failed", exc_info=True)
        await asyncio.sleep(interval)
