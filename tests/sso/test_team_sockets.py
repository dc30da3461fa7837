"""A sign-in that takes someone out of a team closes their open sockets on its conversations."""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group
from django.test import Client

from chatsite.asgi import application
from conversations.chat import services
from conversations.models import Conversation
from tests.oidc_provider.process import person
from tests.sso.flow import round_trip
from tests.support import model, seed_catalogue

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def test_a_sign_in_without_the_team_closes_the_open_team_chat(
        sso: Any, owner: Any, member: Any, settings: Any) -> None:
    settings.OIDC_TEAMS_CLAIM = "groups"
    settings.OIDC_TEAM_MAP = {"eng": "Engineering"}

    def prepare() -> tuple[Conversation, str]:
        seed_catalogue()
        team = Group.objects.create(name="Engineering")
        owner.groups.add(team)
        member.groups.add(team)
        conversation = services.conversation_create(owner, model=model("llama-3.2-3b"))
        Conversation.objects.filter(pk=conversation.pk).update(team=team)
        client = Client()
        client.force_login(member)
        return conversation, client.cookies[settings.SESSION_COOKIE_NAME].value

    conversation, cookie = await database_sync_to_async(prepare)()
    socket = WebsocketCommunicator(application, f"/ws/c/{conversation.pk}/", headers=[
        (b"origin", b"http://localhost:8000"),
        (b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode())])
    assert (await socket.connect())[0]
    sso.reset({"bob": person("bob", "bob@example.com", groups=[])})  # no longer in "eng"
    response = await database_sync_to_async(round_trip)(Client(), sso, "bob")
    assert response.status_code == 302
    frames = []
    while True:
        output = await socket.receive_output(5)
        if output["type"] == "websocket.close":
            break
        frames.append(json.loads(output.get("text") or "null"))
    assert {"type": "revoked", "reason": "access"} in frames
    assert output == {"type": "websocket.close", "code": 4403}
    assert not await database_sync_to_async(member.groups.exists)()
    await socket.disconnect()
