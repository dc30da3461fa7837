"""Cross-site websocket hijacking (threat T19): only our own origin may connect."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from chatsite.asgi import application


async def _session_cookie(user: Any) -> bytes:
    def login() -> str:
        client = Client()
        client.force_login(user)
        return client.cookies[settings.SESSION_COOKIE_NAME].value

    return f"{settings.SESSION_COOKIE_NAME}={await database_sync_to_async(login)()}".encode()


async def _connect(headers: list[tuple[bytes, bytes]]) -> tuple[bool, Any]:
    communicator = WebsocketCommunicator(application, "/ws/ping/", headers=headers)
    connected, code = await communicator.connect()
    if connected:
        await communicator.send_json_to({"ref": 1})
        reply = await communicator.receive_json_from()
        await communicator.disconnect()
        return True, reply
    return False, code


@pytest.fixture
def production_like() -> None:
    # The validator captured ALLOWED_HOSTS when asgi.py was imported: test the real one.
    assert settings.DEBUG is False
    assert "localhost" in settings.ALLOWED_HOSTS


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("origin", [
    b"https://evil.test",
    b"http://localhost.evil.test",
    b"http://evil-localhost",
    b"http://127.0.0.2:8000",
    b"http://127.0.0.1:9999",  # our host, another port
    b"https://127.0.0.1:8000",  # our host and port, another scheme
    b"http://localhost:9999",
    b"null",
    b"http://localhost@evil.test",
])
async def test_it_refuses_foreign_and_look_alike_origins(
    production_like: None, owner: Any, origin: bytes
) -> None:
    cookie = await _session_cookie(owner)
    connected, _ = await _connect([(b"origin", origin), (b"cookie", cookie),
                                   ])
    assert connected is False


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_it_refuses_a_connection_without_origin(production_like: None, owner: Any) -> None:
    cookie = await _session_cookie(owner)
    connected, _ = await _connect([(b"cookie", cookie)])
    assert connected is False


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_it_accepts_our_own_origin_for_a_signed_in_user(
    production_like: None, owner: Any
) -> None:
    cookie = await _session_cookie(owner)
    connected, reply = await _connect([(b"origin", b"http://localhost:8000"),
                                       (b"cookie", cookie)])
    assert connected is True
    assert reply == {"type": "pong", "ref": 1}


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_it_refuses_an_anonymous_socket_from_our_own_origin(production_like: None) -> None:
    connected, code = await _connect([(b"origin", b"http://localhost:8000")])
    assert connected is False
    assert code == 4401


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_bad_frame_gets_an_error_frame_and_the_socket_keeps_serving(
    production_like: None, owner: Any
) -> None:
    cookie = await _session_cookie(owner)
    communicator = WebsocketCommunicator(application, "/ws/ping/", headers=[
        (b"origin", b"http://localhost:8000"), (b"cookie", cookie)])
    assert (await communicator.connect())[0]
    for frame in ["not json", "[1,2]", "x" * 70_000]:
        await communicator.send_to(text_data=frame)
        reply = await communicator.receive_json_from()
        assert reply["type"] == "error" and reply["code"] == "bad_frame"
    await communicator.send_json_to({"ref": "still-here"})
    assert await communicator.receive_json_from() == {"type": "pong", "ref": "still-here"}
    await communicator.disconnect()
