"""Share links, team moves, export/import and limits on the send path."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from chatsite.asgi import application
from conversations.chat import services
from conversations.errors import ServiceError
from conversations.models import Budget, Conversation, Message, MessageStatus, ShareLink
from conversations.sharing import links
from tests.support import model, post_message, signed_in


def _chat(user: Any, *texts: str) -> Conversation:
    conversation = services.conversation_create(user, model=model())
    for text in texts:
        result = services.message_post(user, conversation, text=text, client_id=uuid.uuid4())
        Message.objects.filter(pk=result.assistant_message.pk).update(
            status=MessageStatus.COMPLETE, content=f"answer to {text}")
        conversation.refresh_from_db()
    return conversation


@pytest.mark.django_db
def test_a_share_shows_the_conversation_up_to_the_moment_of_sharing(owner: Any,
                                                                    outsider: Any) -> None:
    conversation = _chat(owner, "first question")
    share = links.create_share(owner, conversation)
    conversation.refresh_from_db()
    result = services.message_post(owner, conversation, text="later question",
                                   client_id=uuid.uuid4())
    Message.objects.filter(pk=result.assistant_message.pk).update(status="complete")
    viewer = signed_in(outsider)
    html = viewer.get(f"/s/{share.token}/").content.decode()
    assert "first question" in html and "answer to first question" in html
    assert "later question" not in html
    assert 'id="composer"' not in html and "data-regenerate" not in html
    later = Message.objects.get(content="later question")
    assert viewer.get(f"/s/{share.token}/m/{later.pk}/").status_code == 404
    live = links.create_share(owner, conversation, live=True)
    assert "later question" in viewer.get(f"/s/{live.token}/").content.decode()


@pytest.mark.django_db
def test_share_links_need_a_login_unless_anonymous_links_are_allowed(owner: Any,
                                                                     settings: Any) -> None:
    conversation = _chat(owner, "hello")
    share = links.create_share(owner, conversation)
    response = Client().get(f"/s/{share.token}/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert "hello" not in response.content.decode()
    with pytest.raises(ServiceError):
        links.create_share(owner, conversation, anonymous=True)
    settings.ALLOW_ANONYMOUS_SHARES = True
    anonymous = links.create_share(owner, conversation, anonymous=True)
    assert "hello" in Client().get(f"/s/{anonymous.token}/").content.decode()
    settings.ALLOW_ANONYMOUS_SHARES = False  # the admin turned it off: the link stops working
    assert Client().get(f"/s/{anonymous.token}/").status_code == 302


@pytest.mark.django_db
def test_revoked_expired_and_unknown_links_are_not_found(owner: Any, outsider: Any) -> None:
    conversation = _chat(owner, "secret plans")
    share = links.create_share(owner, conversation, expires_in_days=1)
    viewer = signed_in(outsider)
    assert viewer.get(f"/s/{share.token}/").status_code == 200
    assert links.revoke_share(share, owner)
    assert not links.revoke_share(share, owner)
    response = viewer.get(f"/s/{share.token}/")
    assert response.status_code == 404 and "secret plans" not in response.content.decode()
    expired = links.create_share(owner, conversation, expires_in_days=1)
    ShareLink.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(1))
    assert viewer.get(f"/s/{expired.token}/").status_code == 404
    assert viewer.get("/s/not-a-token/").status_code == 404


@pytest.mark.django_db
def test_only_the_owner_creates_and_revokes_links(owner: Any, member: Any) -> None:
    conversation = _chat(owner, "hi")
    team = Group.objects.create(name="research")
    owner.groups.add(team)
    member.groups.add(team)
    Conversation.objects.filter(pk=conversation.pk).update(team=team)
    assert signed_in(member).post(f"/c/{conversation.pk}/share/").status_code == 404
    assert ShareLink.objects.count() == 0
    signed_in(owner).post(f"/c/{conversation.pk}/share/", {"live": "1"})
    share = ShareLink.objects.get()
    assert share.live
    assert signed_in(member).post(
        f"/c/{conversation.pk}/share/{share.pk}/revoke/").status_code == 404
    signed_in(owner).post(f"/c/{conversation.pk}/share/{share.pk}/revoke/")
    share.refresh_from_db()
    assert share.revoked_at is not None


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_revoking_closes_the_socket_of_a_viewer_who_has_the_page_open(
    owner: Any, outsider: Any
) -> None:
    from django.conf import settings as dj

    conversation = await database_sync_to_async(_chat)(owner, "hi")
    share = await database_sync_to_async(links.create_share)(owner, conversation, live=True)

    def cookie() -> bytes:
        client = Client()
        client.force_login(outsider)
        return f"{dj.SESSION_COOKIE_NAME}={client.cookies[dj.SESSION_COOKIE_NAME].value}".encode()

    headers = [(b"origin", b"http://localhost:8000"),
               (b"cookie", await database_sync_to_async(cookie)())]
    socket = WebsocketCommunicator(application, f"/ws/s/{share.token}/", headers=headers)
    assert (await socket.connect())[0]
    assert (await socket.receive_json_from())["type"] == "hello"
    await database_sync_to_async(links.revoke_share)(share, owner)
    assert await socket.receive_json_from(5) == {"type": "revoked", "reason": "revoked"}
    assert (await socket.receive_output(5))["code"] == 4403
    await socket.disconnect()
    again = WebsocketCommunicator(application, f"/ws/s/{share.token}/", headers=headers)
    connected, code = await again.connect()
    assert not connected and code == 4403


@pytest.mark.django_db
def test_the_owner_moves_a_conversation_to_one_of_their_teams(owner: Any, member: Any,
                                                              outsider: Any) -> None:
    conversation = _chat(owner, "team topic")
    team = Group.objects.create(name="research")
    other = Group.objects.create(name="sales")
    owner.groups.add(team)
    member.groups.add(team)
    client = signed_in(owner)
    form = {"model": "llama-3.2-3b", "system_prompt": "", "team": str(other.pk)}
    assert client.post(f"/c/{conversation.pk}/settings/", form).status_code == 400
    form["team"] = str(team.pk)
    assert client.post(f"/c/{conversation.pk}/settings/", form).status_code == 302
    assert "team topic" in signed_in(member).get("/").content.decode()
    assert signed_in(member).get(f"/c/{conversation.pk}/").status_code == 200
    assert signed_in(outsider).get(f"/c/{conversation.pk}/").status_code == 404
    form["team"] = ""
    client.post(f"/c/{conversation.pk}/settings/", form)
    assert signed_in(member).get(f"/c/{conversation.pk}/").status_code == 404


@pytest.mark.django_db
def test_export_in_three_formats_and_import_our_own_json(owner: Any, outsider: Any) -> None:
    conversation = _chat(owner, "What is **Markdown**?", "And <script>x</script>?")
    client = signed_in(owner)
    md = client.get(f"/c/{conversation.pk}/export/?format=md")
    assert md["Content-Type"].startswith("text/markdown")
    assert "## alice" in md.content.decode() and "answer to What is **Markdown**?" in (
        md.content.decode())
    data = client.get(f"/c/{conversation.pk}/export/?format=json").json()
    assert data["format"] == "llamachat.conversation" and len(data["messages"]) == 4
    archive = zipfile.ZipFile(io.BytesIO(client.get(
        f"/c/{conversation.pk}/export/?format=zip").content))
    assert {"conversation.json", "conversation.md"} <= set(archive.namelist())
    assert signed_in(outsider).get(f"/c/{conversation.pk}/export/?format=json").status_code == 404

    upload = io.BytesIO(json.dumps(data).encode())
    upload.name = "export.json"
    response = signed_in(outsider).post("/import/", {"file": upload})
    assert response.status_code == 302
    imported = Conversation.objects.get(owner=outsider)
    assert imported.pk != conversation.pk
    assert [m.content for m in imported.messages.order_by("seq")] == [
        m["content"] for m in data["messages"]]
    assert imported.messages.filter(role="user").exclude(author=outsider).count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("payload", [b"not json", b"{}", json.dumps(
    {"format": "llamachat.conversation", "version": 1, "messages": [{"role": "admin"}]}).encode(),
    json.dumps({"format": "llamachat.conversation", "version": 1, "messages": [
        {"id": "a", "parent": "zzz", "role": "user", "content": "x"}]}).encode(),
    b"PK\x03\x04garbage"])
def test_a_bad_import_is_refused_clearly_and_changes_nothing(owner: Any, payload: bytes) -> None:
    upload = io.BytesIO(payload)
    upload.name = "x.json"
    response = signed_in(owner).post("/import/", {"file": upload}, follow=True)
    assert response.status_code == 200
    assert Conversation.objects.count() == 0
    assert any(m.level_tag == "error" for m in response.context["messages"])


@pytest.mark.django_db(transaction=True)
def test_a_budget_stops_use_with_a_message_saying_which_limit_and_when_it_resets(
    owner: Any, emulated: Any
) -> None:
    conversation = _chat(owner, "warm up")
    from conversations.models import UsageRecord

    UsageRecord.objects.filter(user=owner).update(prompt_tokens=900, completion_tokens=50)
    Budget.objects.create(user=owner, period="day", max_tokens=1000, warn_percent=80)
    client = signed_in(owner)
    response = post_message(client, conversation, "still ok?")
    assert response.status_code in (200, 201)
    Message.objects.filter(status__in=["queued", "streaming"]).update(status="complete")
    UsageRecord.objects.filter(user=owner).update(prompt_tokens=1000)
    response = post_message(client, conversation, "over budget")
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert "1,000 tokens" in error["message"] and "resets at" in error["message"]
    assert not Message.objects.filter(content="over budget").exists()


@pytest.mark.django_db
def test_rate_and_concurrency_limits_refuse_with_clear_messages(owner: Any,
                                                                settings: Any) -> None:
    settings.RATE_LIMIT_PER_MINUTE = 2
    settings.MAX_CONCURRENT_ANSWERS = 5
    conversation = _chat(owner, "one", "two")
    response = post_message(signed_in(owner), conversation, "three")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert "you can send again at" in response.json()["error"]["message"]
    settings.RATE_LIMIT_PER_MINUTE = 100
    settings.MAX_CONCURRENT_ANSWERS = 1
    other = services.conversation_create(owner, model=model())
    services.message_post(owner, other, text="busy", client_id=uuid.uuid4())
    response = post_message(signed_in(owner), conversation, "four")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "too_many_answers"
