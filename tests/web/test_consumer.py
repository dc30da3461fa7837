"""The websocket consumer through the real ASGI application, with the runner and emulators."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import Group
from django.test import Client

from chatsite.asgi import application
from conversations.answers.runner import run_generation
from conversations.chat import services
from conversations.models import Conversation, Message, MessageStatus
from conversations.rendering import render_markdown
from tests.support import model, queue_answer

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]
ORIGIN = (b"origin", b"http://localhost:8000")


async def _cookie(user: Any) -> tuple[bytes, bytes]:
    def login() -> str:
        client = Client()
        client.force_login(user)
        return client.cookies[settings.SESSION_COOKIE_NAME].value

    value = await database_sync_to_async(login)()
    return (b"cookie", f"{settings.SESSION_COOKIE_NAME}={value}".encode())


async def _socket(user: Any, conversation: Conversation) -> WebsocketCommunicator:
    headers = [ORIGIN] + ([await _cookie(user)] if user is not None else [])
    return WebsocketCommunicator(application, f"/ws/c/{conversation.pk}/", headers=headers)


@database_sync_to_async
def _start(user: Any, text: str, conversation: Conversation | None = None,
           slug: str = "llama-3.2-3b") -> tuple[Conversation, Message]:
    conversation = conversation or services.conversation_create(user, model=model(slug))
    return conversation, queue_answer(user, conversation, text)


class Viewer:
    """Collects frames and rebuilds the answer the way the browser does."""

    def __init__(self, socket: WebsocketCommunicator, ack: bool = True) -> None:
        self.socket = socket
        self.ack = ack
        self.text = ""
        self.html = ""
        self.upto = 0
        self.frames: list[Any] = []
        self.bytes = 0
        self.gaps = 0

    async def next(self, timeout: float = 10) -> Any:
        raw = await self.socket.receive_from(timeout)
        self.bytes += len(raw.encode())
        frame = json.loads(raw)
        self.frames.append(frame)
        if isinstance(frame, list) and frame[0] == "d":
            _, _seq, offset, piece = frame
            if offset > len(self.text.encode("utf-16-le")) // 2:
                self.gaps += 1  # like the browser: ignore it and ask for a snapshot
                await self.socket.send_json_to({"type": "resync", "seq": _seq})
            else:
                units = self.text.encode("utf-16-le")[: offset * 2].decode("utf-16-le")
                self.text = units + piece
        elif isinstance(frame, list) and frame[0] == "b":
            self.html += frame[3]
            self.upto = frame[2]
        elif isinstance(frame, dict) and frame.get("type") == "snapshot":
            self.text, self.html, self.upto = frame["text"], frame["html"], frame["upto"]
        if self.ack and self.bytes:
            await self.socket.send_json_to({"type": "ack", "bytes": self.bytes})
        return frame

    async def until_state(self, *statuses: str, timeout: float = 15) -> dict[str, Any]:
        while True:
            frame = await self.next(timeout)
            if isinstance(frame, dict) and frame.get("type") == "state" and (
                    frame["status"] in statuses):
                return frame


async def test_the_owner_watches_the_answer_arrive_and_it_matches_the_database(
    emulated: Any, owner: Any
) -> None:
    conversation, answer = await _start(owner, "Stream me something [[emu:tokens n=40]]")
    socket = await _socket(owner, conversation)
    assert (await socket.connect())[0]
    viewer = Viewer(socket)
    hello = await viewer.next()
    assert hello["type"] == "hello" and hello["access"] == "manage"
    task = asyncio.create_task(run_generation(answer.pk))
    final = await viewer.until_state("complete")
    await task
    stored = await database_sync_to_async(Message.objects.get)(pk=answer.pk)
    assert viewer.gaps == 0
    assert viewer.text == stored.content
    assert viewer.html == render_markdown(stored.content)
    assert final["length"] == len(stored.content.encode("utf-16-le")) // 2
    deltas = [f for f in viewer.frames if isinstance(f, list) and f[0] == "d"]
    assert 0 < len(deltas) <= 40
    await socket.disconnect()


async def test_a_client_that_missed_the_whole_answer_gets_its_final_state_on_resync(
    emulated: Any, owner: Any
) -> None:
    # A short answer can finish before the browser has even put it on the page (F02).
    conversation, answer = await _start(owner, "Quick one [[emu:tokens n=5]]")
    await run_generation(answer.pk)
    socket = await _socket(owner, conversation)
    assert (await socket.connect())[0]
    viewer = Viewer(socket)
    hello = await viewer.next()
    assert hello["active"] == []
    await socket.send_json_to({"type": "resync", "seq": answer.seq})
    final = await viewer.until_state("complete", timeout=5)
    stored = await database_sync_to_async(Message.objects.get)(pk=answer.pk)
    assert final["id"] == str(answer.pk) and final["seq"] == answer.seq
    assert final["length"] == len(stored.content.encode("utf-16-le")) // 2
    assert final["usage"]["completion_tokens"] == stored.completion_tokens
    await socket.disconnect()


async def test_a_page_that_connects_after_the_title_was_written_gets_it_in_hello(
    emulated: Any, owner: Any
) -> None:
    # The title model can finish while the page is still connecting (or is reconnecting): its
    # `conversation` frame went to nobody, so `hello` carries the stored title.
    conversation, _answer = await _start(owner, "Untitled yet [[emu:tokens n=3]]")
    socket = await _socket(owner, conversation)
    assert (await socket.connect())[0]
    assert (await Viewer(socket).next())["title"] == ""
    await socket.disconnect()

    await database_sync_to_async(Conversation.objects.filter(pk=conversation.pk).update)(
        title="Zip in Python", title_is_auto=True)
    again = await _socket(owner, conversation)
    assert (await again.connect())[0]
    hello = await Viewer(again).next()
    assert hello["type"] == "hello" and hello["title"] == "Zip in Python"
    await again.disconnect()


async def test_an_outsider_is_refused_and_receives_nothing(emulated: Any, owner: Any,
                                                           outsider: Any) -> None:
    conversation, answer = await _start(owner, "Private [[emu:tokens n=10]]")
    socket = await _socket(outsider, conversation)
    connected, code = await socket.connect()
    assert not connected and code == 4403
    await run_generation(answer.pk)
    assert await socket.receive_nothing(0.2)
    anonymous = await _socket(None, conversation)
    connected, code = await anonymous.connect()
    assert not connected and code == 4401


async def test_a_member_removed_from_the_team_while_connected_stops_receiving(
    emulated: Any, owner: Any, member: Any
) -> None:
    team = await database_sync_to_async(Group.objects.create)(name="research")
    await database_sync_to_async(owner.groups.add)(team)
    await database_sync_to_async(member.groups.add)(team)
    conversation, answer = await _start(owner, "Team talk [[emu:tokens n=60 rate=40]]")
    await database_sync_to_async(Conversation.objects.filter(pk=conversation.pk).update)(
        team=team)
    socket = await _socket(member, conversation)
    assert (await socket.connect())[0]
    viewer = Viewer(socket)
    assert (await viewer.next())["access"] == "continue"
    task = asyncio.create_task(run_generation(answer.pk))
    while not any(isinstance(f, list) for f in viewer.frames):
        await viewer.next()
    await database_sync_to_async(member.groups.remove)(team)
    frames_after: list[Any] = []
    while True:
        try:
            frame = await viewer.next(5)
        except (TimeoutError, AssertionError):
            break
        frames_after.append(frame)
        if isinstance(frame, dict) and frame.get("type") == "revoked":
            break
    assert frames_after[-1] == {"type": "revoked", "reason": "access"}
    closed = await socket.receive_output(5)
    assert closed == {"type": "websocket.close", "code": 4403}
    await task
    await socket.disconnect()  # let the application instance finish before the loop closes


async def test_a_viewer_who_reconnects_mid_answer_catches_up_without_gaps(
    emulated: Any, owner: Any
) -> None:
    conversation, answer = await _start(owner, "Long one [[emu:tokens n=200 rate=40]]")
    first = await _socket(owner, conversation)
    assert (await first.connect())[0]
    viewer = Viewer(first)
    await viewer.next()
    task = asyncio.create_task(run_generation(answer.pk))
    while len(viewer.text) < 20:
        await viewer.next()
    await first.disconnect()
    await asyncio.sleep(0.3)  # the answer goes on without any socket (F01)
    second = await _socket(owner, conversation)
    assert (await second.connect())[0]
    again = Viewer(second)
    hello = await again.next()
    assert [item["seq"] for item in hello["active"]] == [answer.seq]
    await again.until_state("complete")
    await task
    stored = await database_sync_to_async(Message.objects.get)(pk=answer.pk)
    assert any(isinstance(f, dict) and f.get("type") == "snapshot" for f in again.frames)
    assert again.text == stored.content  # nothing duplicated, nothing lost
    assert again.html == render_markdown(stored.content)
    await second.disconnect()


async def test_stop_ends_the_answer_keeps_what_was_shown_and_closes_upstream(
    emulated: Any, owner: Any
) -> None:
    conversation, answer = await _start(owner, "Go on forever [[emu:tokens n=400 rate=40]]")
    socket = await _socket(owner, conversation)
    assert (await socket.connect())[0]
    viewer = Viewer(socket)
    await viewer.next()
    task = asyncio.create_task(run_generation(answer.pk))
    while len(viewer.text) < 30:
        await viewer.next()
    message = await database_sync_to_async(Message.objects.get)(pk=answer.pk)
    assert await database_sync_to_async(services.generation_stop)(message)
    final = await viewer.until_state("stopped")
    await task
    stored = await database_sync_to_async(Message.objects.get)(pk=answer.pk)
    assert stored.status == MessageStatus.STOPPED
    assert viewer.text == stored.content
    assert final["length"] == len(stored.content.encode("utf-16-le")) // 2
    record = [r for r in emulated.requests if r.endpoint == "model"][-1]
    assert record.outcome == "client-closed"
    assert len(record.sent_text) < 400 * 3  # far from the whole answer (400 tokens)
    assert stored.content == record.sent_text[: len(stored.content)]
    await socket.disconnect()


async def test_a_slow_client_cannot_make_the_server_buffer_without_bound(
    emulated: Any, owner: Any
) -> None:
    conversation = await database_sync_to_async(lambda: services.conversation_create(
        owner, model=model(), params={"max_tokens": 120_000}))()
    conversation, answer = await _start(owner, "Huge [[emu:tokens n=95000]]", conversation)
    socket = await _socket(owner, conversation)
    assert (await socket.connect())[0]
    viewer = Viewer(socket, ack=False)  # never acknowledges anything
    await viewer.next()
    await run_generation(answer.pk)
    while True:
        try:
            frame = await viewer.next(1)
        except (TimeoutError, AssertionError):
            break
        if isinstance(frame, dict) and frame.get("type") == "state" and (
                frame["status"] == "complete"):
            break
    from conversations.web.consumers import SOFT_LAG_BYTES

    kinds = [f[0] if isinstance(f, list) else f.get("type") for f in viewer.frames]
    assert kinds[-1] == "state", kinds[-5:]
    stored = await database_sync_to_async(Message.objects.get)(pk=answer.pk)
    assert stored.status == MessageStatus.COMPLETE, (stored.error_code, stored.error_message)
    text_bytes = len(stored.content.encode())
    assert text_bytes > SOFT_LAG_BYTES * 1.2  # the answer was larger than the cap
    assert viewer.bytes < SOFT_LAG_BYTES + 64 * 1024  # but what was pushed stayed bounded
    await socket.disconnect()


async def test_bad_frames_get_error_frames_and_the_socket_keeps_serving(
    emulated: Any, owner: Any
) -> None:
    conversation, _answer = await _start(owner, "Hi")
    socket = await _socket(owner, conversation)
    assert (await socket.connect())[0]
    await socket.receive_json_from()
    for raw in ["{", "[]", json.dumps({"type": "nope"}), "x" * 70_000,
                json.dumps({"type": "resync", "seq": 999})]:
        await socket.send_to(text_data=raw)
        reply = await socket.receive_json_from()
        assert reply["type"] == "error"
    await socket.send_json_to({"type": "ping", "ref": 7})
    assert await socket.receive_json_from() == {"type": "pong", "ref": 7}
    await socket.disconnect()


async def test_viewers_hear_the_answer_is_streaming_before_any_of_its_text(
    emulated: Any, owner: Any
) -> None:
    # The vendor call goes out before the viewers are told (runner.Generation.run); a vendor
    # that answers at once must still not get text to a page before the "streaming" frame.
    conversation, answer = await _start(owner, "At once [[emu:tokens n=30 ttft=0]]")
    socket = await _socket(owner, conversation)
    assert (await socket.connect())[0]
    viewer = Viewer(socket)
    assert (await viewer.next())["type"] == "hello"
    task = asyncio.create_task(run_generation(answer.pk))
    await viewer.until_state("complete")
    await task
    kinds = [f.get("status") if isinstance(f, dict) else f[0] for f in viewer.frames[1:]]
    assert kinds[0] == MessageStatus.STREAMING, kinds
    assert "d" in kinds and kinds[-1] == MessageStatus.COMPLETE, kinds
    await socket.disconnect()

