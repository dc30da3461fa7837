"""Pages and endpoints: one access rule for every path, constant queries, clear errors."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from conversations.chat import services
from conversations.models import Conversation, Message, MessageStatus, TeamSettings
from tests.conftest import PASSWORD
from tests.support import model, post_message, signed_in


def _finished_chat(user: Any, **extra: Any) -> tuple[Conversation, Message]:
    conversation = services.conversation_create(user, model=model(), **extra)
    result = services.message_post(user, conversation, text="Hello", client_id=uuid.uuid4())
    Message.objects.filter(pk=result.assistant_message.pk).update(
        status=MessageStatus.COMPLETE, content="**Hi** there")
    conversation.refresh_from_db()
    return conversation, result.assistant_message


@pytest.fixture
def team_setup(owner: Any, member: Any, outsider: Any, django_user_model: Any) -> dict[str, Any]:
    team = Group.objects.create(name="research")
    other_team = Group.objects.create(name="sales")
    owner.groups.add(team)
    member.groups.add(team)
    stranger = django_user_model.objects.create_user("dora", password=PASSWORD)
    stranger.groups.add(other_team)
    conversation, answer = _finished_chat(owner)
    Conversation.objects.filter(pk=conversation.pk).update(team=team)
    return {"team": team, "conversation": conversation, "answer": answer, "stranger": stranger}


def _paths(conversation: Conversation, answer: Message) -> dict[str, tuple[str, str]]:
    base = f"/c/{conversation.pk}"
    return {
        "page": ("get", f"{base}/"),
        "thread": ("get", f"{base}/thread/"),
        "fragment": ("get", f"{base}/m/{answer.pk}/"),
        "switch": ("post", f"{base}/m/{answer.pk}/switch/"),
        "send": ("post", f"{base}/messages/"),
        "regenerate": ("post", f"{base}/m/{answer.pk}/regenerate/"),
        "stop": ("post", f"{base}/m/{answer.pk}/stop/"),
        "rename": ("post", f"{base}/update/"),
        "settings": ("get", f"{base}/settings/"),
        "delete": ("post", f"{base}/delete/"),
    }


READ = {"page", "thread", "fragment"}
# Switching the branch changes it for everyone: only those who may continue may.
CONTINUE = READ | {"send", "regenerate", "stop", "switch"}
MANAGE = CONTINUE | {"rename", "settings", "delete"}


def _call(client: Client, method: str, url: str) -> int:
    data = {"text": "hello from a test", "client_id": str(uuid.uuid4()), "title": "x"}
    response = getattr(client, method)(url, data if method == "post" else None,
                                       HTTP_ACCEPT="application/json")
    return int(response.status_code)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("persona", "allowed"), [
    ("owner", MANAGE), ("member", CONTINUE), ("member_read_only", READ),
    ("stranger", set()), ("outsider", set()), ("deactivated", "login"), ("anonymous", "login"),
])
def test_the_access_matrix_holds_on_every_path(team_setup: Any, owner: Any, member: Any,
                                               outsider: Any, emulated: Any, persona: str,
                                               allowed: Any) -> None:
    conversation, answer = team_setup["conversation"], team_setup["answer"]
    users = {"owner": owner, "member": member, "member_read_only": member,
             "stranger": team_setup["stranger"], "outsider": outsider, "deactivated": member}
    if persona == "member_read_only":
        TeamSettings.objects.create(team=team_setup["team"], members_can_continue=False)
    client = Client()
    if persona in users:
        client.force_login(users[persona])
    if persona == "deactivated":
        type(member).objects.filter(pk=member.pk).update(is_active=False)
    before = Message.objects.count()
    for name, (method, url) in _paths(conversation, answer).items():
        if name == "delete":
            continue  # checked last, below
        status = _call(client, method, url)
        if allowed == "login":
            assert status == 302, (persona, name, status)
        elif name in allowed:
            assert status < 400 or status == 409, (persona, name, status)
        else:
            assert status == 404, (persona, name, status)
    if allowed == "login" or "send" not in allowed:
        assert Message.objects.count() == before, "a refused persona wrote something"
        assert emulated.calls("cloudflare") == 0, "a refused persona reached the provider"
    status = _call(client, "post", _paths(conversation, answer)["delete"][1])
    exists = Conversation.objects.filter(pk=conversation.pk).exists()
    assert exists is not (allowed != "login" and "delete" in allowed)
    # A deletion asked for as JSON (the sidebar's row menu) answers 200, a form post redirects.
    expected = (302,) if allowed == "login" else (200,) if "delete" in allowed else (404,)
    assert status in expected


@pytest.mark.django_db
def test_malformed_ids_are_not_found_not_errors(owner: Any) -> None:
    client = signed_in(owner)
    conversation, _ = _finished_chat(owner)
    assert client.get("/c/not-a-uuid/").status_code == 404
    assert client.get(f"/c/{uuid.uuid4()}/").status_code == 404
    assert client.get(f"/c/{conversation.pk}/m/{uuid.uuid4()}/").status_code == 404
    assert client.get(f"/c/{conversation.pk}/thread/?before=abc").status_code == 404
    response = client.post(f"/c/{conversation.pk}/messages/",
                           {"text": "x", "client_id": "nope"}, HTTP_ACCEPT="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_client_id"
    response = client.post(f"/c/{conversation.pk}/messages/",
                           {"text": "x", "edit_of": str(uuid.uuid4())})
    assert response.status_code == 404


@pytest.mark.django_db
def test_send_errors_are_json_with_a_message_and_keep_nothing(owner: Any) -> None:
    client = signed_in(owner)
    conversation, _ = _finished_chat(owner)
    before = Message.objects.count()
    response = post_message(client, conversation, "   ")
    assert response.status_code == 400
    assert response.json()["error"] == {"code": "empty", "message": "Write a message first."}
    assert Message.objects.count() == before


@pytest.mark.django_db
def test_posting_without_csrf_is_refused(owner: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    conversation, _ = _finished_chat(owner)
    assert post_message(client, conversation, "hi").status_code == 403


def _long_chat(user: Any, size: int) -> Conversation:
    conversation = services.conversation_create(user, model=model())
    parent = None
    rows = []
    for seq in range(1, size + 1):
        role = Message.Role.USER if seq % 2 else Message.Role.ASSISTANT
        message = Message(conversation=conversation, parent=parent, seq=seq, role=role,
                          author=user if role == Message.Role.USER else None,
                          model=None if role == Message.Role.USER else conversation.model,
                          content=f"message {seq} with **markdown**",
                          status=MessageStatus.COMPLETE)
        rows.append(message)
        parent = message
    Message.objects.bulk_create(rows)
    Conversation.objects.filter(pk=conversation.pk).update(active_leaf=rows[-1],
                                                           next_seq=size + 1)
    return conversation


@pytest.mark.django_db
def test_the_conversation_page_costs_the_same_queries_at_10_100_and_1000_messages(
    owner: Any
) -> None:
    client = signed_in(owner)
    client.get("/")  # warm per-process caches (the first-admin check) before counting
    counts = {}
    for size in (10, 100, 1000):
        conversation = _long_chat(owner, size)
        with CaptureQueriesContext(connection) as queries:
            response = client.get(f"/c/{conversation.pk}/")
        assert response.status_code == 200
        counts[size] = len(queries)
        html = response.content.decode()
        assert html.count('class="msg ') == min(size, 50)
        assert ("data-load-older" in html) is (size > 50)
    assert counts[10] == counts[100] == counts[1000], counts
    assert counts[1000] <= 15, counts


@pytest.mark.django_db
def test_older_messages_load_in_pages(owner: Any) -> None:
    client = signed_in(owner)
    conversation = _long_chat(owner, 120)
    html = client.get(f"/c/{conversation.pk}/thread/?before=71").content.decode()
    assert html.count('class="msg ') == 50
    assert 'id="m-21"' in html and 'id="m-70"' in html and 'id="m-71"' not in html
    assert 'data-before="21"' in html


@pytest.mark.django_db
def test_the_page_renders_model_output_through_the_sanitiser(owner: Any) -> None:
    conversation, answer = _finished_chat(owner)
    Message.objects.filter(pk=answer.pk).update(
        content='<script>alert(1)</script> [x](javascript:alert(1)) ![p](https://evil.test/p.png)')
    html = signed_in(owner).get(f"/c/{conversation.pk}/").content.decode()
    assert "<script>alert(1)" not in html
    assert 'href="javascript:' not in html
    assert 'src="https://evil.test' not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.django_db
def test_a_new_user_sees_the_model_picker_grouped_by_provider(owner: Any) -> None:
    html = signed_in(owner).get("/").content.decode()
    for label in ["Cloudflare Workers AI", "Alibaba DashScope", "Baidu Qianfan",
                  "Llama 3.2 3B Instruct", "Meta-Llama-3-70B-Instruct"]:
        assert label in html
    assert html.count("· vision") == 2
