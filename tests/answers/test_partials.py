"""Partial saves (conversations/answers/partials.py): each answer's text so far, written about
once a second; saves that arrive while another is written go together in one transaction."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from conversations.answers.partials import save_partial
from conversations.chat import services
from conversations.models import Message, MessageStatus
from tests.support import model

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@sync_to_async
def streaming_answers(owner: Any, count: int, **fields: Any) -> list[uuid.UUID]:
    """`count` answers left `streaming` (their runs finished; the rows are set back)."""
    ids = []
    for _ in range(count):
        conversation = services.conversation_create(owner, model=model())
        posted = services.message_post(owner, conversation, text="Hi", client_id=uuid.uuid4())
        ids.append(posted.assistant_message.pk)
    Message.objects.filter(pk__in=ids).update(
        status=MessageStatus.STREAMING, content="", stop_requested=False, **fields)
    return ids


@sync_to_async
def rows(ids: list[uuid.UUID]) -> list[Message]:
    by_id = Message.objects.in_bulk(ids)
    return [by_id[i] for i in ids]


async def test_saves_that_arrive_together_are_written_in_one_transaction(
        emulated: Any, owner: Any) -> None:
    ids = await streaming_answers(owner, 6)
    stops = await asyncio.gather(*(save_partial(i, f"text {n}") for n, i in enumerate(ids)))
    assert stops == [False] * 6
    saved = await rows(ids)
    assert [m.content for m in saved] == [f"text {n}" for n in range(6)]
    # One batch takes one clock reading: every row carries the same heartbeat.
    assert len({m.heartbeat_at for m in saved}) == 1


async def test_a_save_alone_is_written_at_once(emulated: Any, owner: Any) -> None:
    first, second = await streaming_answers(owner, 2)
    assert await save_partial(first, "one") is False
    assert await save_partial(second, "two") is False
    a, b = await rows([first, second])
    assert (a.content, b.content) == ("one", "two")
    assert a.heartbeat_at != b.heartbeat_at  # two writes, one after the other


async def test_a_stop_asked_meanwhile_is_reported_and_leaves_the_text_alone(
        emulated: Any, owner: Any) -> None:
    going, stopped = await streaming_answers(owner, 2)
    await sync_to_async(Message.objects.filter(pk=stopped).update)(
        stop_requested=True, content="kept")
    results = await asyncio.gather(save_partial(going, "more"), save_partial(stopped, "lost?"))
    assert results == [False, True]
    a, b = await rows([going, stopped])
    assert (a.content, b.content) == ("more", "kept")


async def test_a_late_save_never_overwrites_a_finished_answer(emulated: Any, owner: Any) -> None:
    (done,) = await streaming_answers(owner, 1)
    await sync_to_async(Message.objects.filter(pk=done).update)(
        status=MessageStatus.COMPLETE, content="the whole answer")
    assert await save_partial(done, "the whole") is False
    (row,) = await rows([done])
    assert (row.status, row.content) == (MessageStatus.COMPLETE, "the whole answer")


async def test_a_waiter_that_leaves_does_not_lose_the_others_results(
        emulated: Any, owner: Any) -> None:
    ids = await streaming_answers(owner, 3)
    leaving = asyncio.ensure_future(save_partial(ids[0], "gone"))
    staying = [asyncio.ensure_future(save_partial(i, "here")) for i in ids[1:]]
    await asyncio.sleep(0)
    leaving.cancel()
    assert await asyncio.gather(*staying) == [False, False]
    saved = await rows(ids[1:])
    assert [m.content for m in saved] == ["here", "here"]
