"""Removing a member on the team page closes their open sockets on the team's conversations at
once (the existing m2m_changed push, T18), through the real ASGI application."""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import Group
from django.test import Client

from chatsite.asgi import application
from conversations.chat import services as chat_services
from conversations.models import Conversation, TeamSettings
from tests.support import model

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]
ORIGIN = (b"origin", b"http://localhost:8000")


def _session_cookie(user: Any) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    value = client.cookies[settings.SESSION_COOKIE_NAME].value
    return (b"cookie", f"{settings.SESSION_COOKIE_NAME}={value}".encode())


def _shared_conversation(owner: Any, member: Any) -> tuple[Group, Conversation]:
    team = Group.objects.create(name="research")
    team.user_set.add(owner, member)
    TeamSettings.objects.create(team=team).managers.add(owner)
    conversation = chat_services.conversation_create(owner, model=model())
    Conversation.objects.filter(pk=conversation.pk).update(team=team)
    return team, conversation


def _remove_on_the_team_page(manager: Any, team: Group, user: Any) -> int:
    client = Client()
    client.force_login(manager)
    return client.post(f"/teams/{team.pk}/members/{user.pk}/remove/").status_code


async def test_a_removed_member_loses_their_open_socket_at_once(owner: Any,
                                                                member: Any) -> None:
    team, conversation = await database_sync_to_async(_shared_conversation)(owner, member)
    cookie = await database_sync_to_async(_session_cookie)(member)
    socket = WebsocketCommunicator(application, f"/ws/c/{conversation.pk}/",
                                   headers=[ORIGIN, cookie])
    connected, _code = await socket.connect()
    assert connected
    status = await database_sync_to_async(_remove_on_the_team_page)(owner, team, member)
    assert status == 302
    frames: list[Any] = []
    while True:
        message = await socket.receive_output(5)
        if message["type"] == "websocket.close":
            break
        frames.append(json.loads(message["text"]))
    assert {"type": "revoked", "reason": "access"} in frames
    assert message == {"type": "websocket.close", "code": 4403}
    await socket.disconnect()


async def test_a_member_who_stays_keeps_their_socket(owner: Any, member: Any,
                                                     outsider: Any) -> None:
    team, conversation = await database_sync_to_async(_shared_conversation)(owner, member)
    await database_sync_to_async(team.user_set.add)(outsider)
    cookie = await database_sync_to_async(_session_cookie)(member)
    socket = WebsocketCommunicator(application, f"/ws/c/{conversation.pk}/",
                                   headers=[ORIGIN, cookie])
    assert (await socket.connect())[0]
    await database_sync_to_async(_remove_on_the_team_page)(owner, team, outsider)
    while not await socket.receive_nothing(0.5):
        message = await socket.receive_output(1)
        assert message["type"] != "websocket.close"
        assert json.loads(message["text"]).get("type") != "revoked"
    await socket.disconnect()
