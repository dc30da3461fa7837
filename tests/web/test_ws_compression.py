"""Websocket frames are compressed (permessage-deflate) for clients that offer it, as every
browser does; a client that does not offer it gets the same frames uncompressed; an operator can
turn it off; and a compressed message cannot inflate past the 1 MiB limit (issue 16, the wire
bytes row; threat T13's bounded input)."""

from __future__ import annotations

import contextlib
import json
import secrets
import uuid
from collections import deque
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.conf import settings
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from bench.relay import CountingDeflate
from conversations.chat import services
from conversations.models import Conversation, Message, MessageStatus
from tests.api.conftest import ApiServer
from tests.conftest import ARTIFACTS
from tests.support import model, signed_in, wait_final

pytestmark = pytest.mark.django_db(transaction=True)


class Socket:
    """A websocket to one conversation that records, per message, the payload bytes it carried
    on the wire (compressed, when deflate was agreed) and the bytes of the frame's text."""

    def __init__(self, server_url: str, conversation: Conversation, session: str,
                 compression: str | None) -> None:
        url = server_url.replace("http://", "ws://") + f"/ws/c/{conversation.pk}/"
        self.wire: deque[int] = deque()  # the benchmark's counter records compressed sizes
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(connect(
            url, origin=server_url, compression=None, max_size=None,
            extensions=[CountingDeflate(self.wire)] if compression else None,
            additional_headers={"Cookie": f"{settings.SESSION_COOKIE_NAME}={session}"}))

    @property
    def extensions(self) -> str:
        assert self.ws.response is not None
        return self.ws.response.headers.get("Sec-WebSocket-Extensions", "")

    def frames(self, timeout: float = 30) -> Iterator[tuple[int, int, Any]]:
        """(bytes on the wire, bytes of the text, the decoded frame), one message at a time."""
        while True:
            raw = self.ws.recv(timeout=timeout, decode=False)
            wire = self.wire.popleft() if self.ws.protocol.extensions else len(raw)
            yield wire, len(raw), json.loads(raw)

    def close(self) -> None:
        self._stack.close()


def _post(server: ApiServer, owner: Any, conversation: Conversation, text: str) -> Message:
    session = signed_in(owner).cookies[settings.SESSION_COOKIE_NAME].value
    csrf = secrets.token_hex(16)
    response = httpx.post(
        f"{server.url}/c/{conversation.pk}/messages/",
        data={"text": text, "client_id": str(uuid.uuid4())},
        headers={"Cookie": f"{settings.SESSION_COOKIE_NAME}={session}; csrftoken={csrf}",
                 "X-CSRFToken": csrf, "Accept": "application/json"}, timeout=30)
    assert response.status_code == 201, response.text[:300]
    return Message.objects.get(pk=response.json()["assistant"]["id"])


def _socket(server: ApiServer, owner: Any, conversation: Conversation,
            compression: str | None) -> Socket:
    session = signed_in(owner).cookies[settings.SESSION_COOKIE_NAME].value
    return Socket(server.url, conversation, session, compression)


def _stream(socket: Socket, answer: Message) -> tuple[int, int, str]:
    """Wire bytes, text bytes and the delta text of every frame until the answer's final state."""
    wire = payload = 0
    text = ""
    for size, raw, frame in socket.frames():
        wire, payload = wire + size, payload + raw
        if isinstance(frame, list) and frame[:2] == ["d", answer.seq]:
            text = text[:frame[2]] + frame[3]
        if isinstance(frame, dict) and frame.get("type") == "state" \
                and frame.get("seq") == answer.seq and frame.get("status") != "streaming":
            return wire, payload, text


def test_a_streamed_answer_crosses_the_wire_compressed_when_the_client_offers_deflate(
        api_server: ApiServer, emulated: Any, owner: Any) -> None:
    conversation = services.conversation_create(owner, model=model())
    socket = _socket(api_server, owner, conversation, "deflate")
    try:
        assert "permessage-deflate" in socket.extensions
        next(socket.frames())  # hello
        answer = _post(api_server, owner, conversation,
                       "Tell me more [[emu:tokens n=300 rate=600]]")
        wire, payload, text = _stream(socket, answer)
    finally:
        socket.close()
    final = wait_final(answer.pk)
    assert final.status == MessageStatus.COMPLETE
    assert text == final.content  # every delta arrived whole through the compressor
    content_bytes = len(final.content.encode())
    # Uncompressed, deltas + rendered blocks + states are about three times the text; the
    # blocks repeat what the deltas carried and every delta starts alike, so the wire carries
    # well under half of that.
    assert payload > 2 * content_bytes
    assert wire < payload / 2, (wire, payload, content_bytes)
    print(f"text {content_bytes} B, frames {payload} B, on the wire {wire} B")


def test_a_client_that_offers_no_compression_gets_the_same_frames_plain(
        api_server: ApiServer, emulated: Any, owner: Any) -> None:
    conversation = services.conversation_create(owner, model=model())
    socket = _socket(api_server, owner, conversation, None)
    try:
        assert socket.extensions == ""
        next(socket.frames())  # hello
        answer = _post(api_server, owner, conversation, "Plainly [[emu:tokens n=40 rate=400]]")
        wire, payload, text = _stream(socket, answer)
    finally:
        socket.close()
    assert wire == payload
    assert text == wait_final(answer.pk).content


@pytest.fixture(scope="module")
def uncompressed_server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[ApiServer]:
    with django_db_blocker.unblock():
        server = ApiServer(ARTIFACTS / "logs" / "daphne-no-compression.log",
                           WEBSOCKET_COMPRESSION="0")
    yield server
    server.stop()


def test_an_operator_can_turn_compression_off(
        uncompressed_server: ApiServer, owner: Any) -> None:
    conversation = services.conversation_create(owner, model=model())
    socket = _socket(uncompressed_server, owner, conversation, "deflate")
    try:
        assert socket.extensions == ""  # offered, declined
        _wire, _raw, hello = next(socket.frames())
        assert hello["type"] == "hello"
    finally:
        socket.close()


def test_a_compressed_ten_megabyte_message_closes_the_socket_with_1009_before_it_is_inflated(
        api_server: ApiServer, owner: Any) -> None:
    """Ten megabytes of one letter deflate to about ten kilobytes: the server must stop
    inflating at its 1 MiB limit, not hold the whole message, and say why it closed (the
    uncompressed case: tests/web/test_hardening.py)."""
    conversation = services.conversation_create(owner, model=model())
    socket = _socket(api_server, owner, conversation, "deflate")
    try:
        assert "permessage-deflate" in socket.extensions
        next(socket.frames())  # hello
        socket.ws.send("x" * 10 * 1024 * 1024)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                socket.ws.recv(timeout=10)
    finally:
        socket.close()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    # The server is fine: the next socket is served.
    again = _socket(api_server, owner, conversation, "deflate")
    try:
        assert next(again.frames())[2]["type"] == "hello"
    finally:
        again.close()
