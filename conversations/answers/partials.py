"""Partial saves: the text of answers still being written, saved about once a second each.

Every streaming answer saves its text about once a second (runner `_tick`). One write each was
one write transaction each: on SQLite one more turn of the database's single write lock per
stream per second, beside the posts that queue on the same lock (issue 16's burst), and one
more hop to a thread. Saves that arrive while another is being written now wait for it and are
then written together, in one transaction. So a quiet server writes each save at once, as
before, and a busy one writes one batch at a time, however many streams there are.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone

from conversations.models import Message, MessageStatus
from conversations.runtime import off_loop, spawn


@dataclass
class _Writer:
    """One event loop's queue of saves, and whether a batch is being written."""

    waiting: dict[uuid.UUID, tuple[str, asyncio.Future[bool]]] = field(default_factory=dict)
    writing: bool = False


_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Writer] = (
    weakref.WeakKeyDictionary())


async def save_partial(message_id: uuid.UUID, text: str) -> bool:
    """Save an answer's text so far; True when a stop was requested meanwhile (its update then
    changes nothing). Raises what the database raised."""
    loop = asyncio.get_running_loop()
    writer = _writers.setdefault(loop, _Writer())
    done: asyncio.Future[bool] = loop.create_future()
    earlier = writer.waiting.pop(message_id, None)
    if earlier is not None and not earlier[1].done():  # a newer text supersedes it
        earlier[1].set_result(False)
    writer.waiting[message_id] = (text, done)
    if not writer.writing:
        writer.writing = True
        spawn(_write_batches(writer))
    # Shielded: an answer that ends while its save is being written cancels the wait, not the
    # batch, whose other answers still need their results.
    return await asyncio.shield(done)


async def _write_batches(writer: _Writer) -> None:
    try:
        while writer.waiting:
            batch, writer.waiting = writer.waiting, {}
            try:
                stopped = await off_loop(_save_partials)(
                    {message_id: text for message_id, (text, _done) in batch.items()})
            except Exception as exc:
                for _text, done in batch.values():
                    if not done.done():
                        done.set_exception(exc)
                continue
            for message_id, (_text, done) in batch.items():
                if not done.done():
                    done.set_result(message_id in stopped)
    finally:
        writer.writing = False


def _save_partials(texts: dict[uuid.UUID, str]) -> set[uuid.UUID]:
    """One transaction: each text where its answer is still streaming and no stop was asked
    (one statement each, in id order); then, only for those that changed nothing, which of
    them were asked to stop (one more statement)."""
    now = timezone.now()
    missed = []
    with transaction.atomic():
        for message_id in sorted(texts):
            saved = Message.objects.filter(
                pk=message_id, status=MessageStatus.STREAMING, stop_requested=False).update(
                content=texts[message_id], heartbeat_at=now)
            if not saved:
                missed.append(message_id)
    if not missed:
        return set()
    return set(Message.objects.filter(pk__in=missed, stop_requested=True)
               .values_list("pk", flat=True))


__all__ = ["save_partial"]
