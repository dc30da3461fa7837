"""Hardening findings, each reproduced from the outside (threats T08, T13, T18, T19, T21, T22;
failure modes F10, F16): limits that hold under bursts, sessions that end everywhere, a lockout
that cannot be sidestepped, access changes that reach open sockets, bounded JSON, switching
for those who may continue, idempotency over "busy", and a reaper that needs no visitor."""

from __future__ import annotations

import functools
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import Group
from django.db import connections
from django.test import Client
from django.utils import timezone

from chatsite.asgi import application
from conversations.chat import services
from conversations.errors import ServiceError
from conversations.models import Conversation, Message, MessageStatus, TeamSettings
from tests.conftest import ARTIFACTS, PASSWORD, ServerProcess, child_env
from tests.support import model, post_message, queue_answer, signed_in

ORIGIN = (b"origin", b"http://localhost:8000")


def _chat(user: Any, slug: str = "llama-3.2-3b") -> Conversation:
    return services.conversation_create(user, model=model(slug))


def _team_chat(owner: Any, member: Any) -> Conversation:
    """A conversation of `owner`'s shared with a team both belong to."""
    team = Group.objects.create(name="crew")
    owner.groups.add(team)
    member.groups.add(team)
    conversation = _chat(owner)
    services.conversation_update(owner, conversation, team_id=team.pk)
    return conversation


def _all_at_once(calls: list[Any]) -> list[Any]:
    """Run the calls in threads released together; their results or their ServiceErrors."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[Any] = []

    def run(call: Any) -> None:
        barrier.wait()
        try:
            outcomes.append(call())
        except ServiceError as exc:
            outcomes.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


# --- 1. limits hold under bursts ----------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_a_burst_of_prompts_starts_no_more_answers_than_the_limit(
    emulated: Any, owner: Any, settings: Any
) -> None:
    settings.MAX_CONCURRENT_ANSWERS = 3
    outcomes = _all_at_once([
        functools.partial(services.message_post, owner, _chat(owner),
                          text="Slow one [[emu:tokens n=40 rate=40]]", client_id=uuid.uuid4())
        for _ in range(12)])
    started = [o for o in outcomes if not isinstance(o, ServiceError)]
    refused = [o for o in outcomes if isinstance(o, ServiceError)]
    assert len(started) == 3, [getattr(o, "code", "started") for o in outcomes]
    assert {r.code for r in refused} == {"too_many_answers"}
    assert Message.objects.filter(role="assistant").count() == 3


@pytest.mark.django_db(transaction=True)
def test_a_burst_within_the_rate_limit_passes_it_by_none(owner: Any, settings: Any) -> None:
    settings.RATE_LIMIT_PER_MINUTE = 4
    settings.MAX_CONCURRENT_ANSWERS = 100
    outcomes = _all_at_once([
        functools.partial(services.message_post, owner, _chat(owner), text="Hi",
                          client_id=uuid.uuid4()) for _ in range(10)])
    refused = [o for o in outcomes if isinstance(o, ServiceError)]
    assert len(outcomes) - len(refused) == 4
    assert {r.code for r in refused} == {"rate_limited"}


# --- 10. a repeated client_id gets its first pair, never "busy" ----------------------------------
@pytest.mark.django_db(transaction=True)
def test_a_repeated_client_id_sent_in_parallel_gets_the_first_pair(emulated: Any,
                                                                   owner: Any) -> None:
    send = functools.partial(services.message_post, owner, _chat(owner),
                             text="Once [[emu:tokens n=20 rate=40]]", client_id=uuid.uuid4())
    results = _all_at_once([send] * 6)
    assert not [r for r in results if isinstance(r, ServiceError)], results
    assert len({r.assistant_message.pk for r in results}) == 1
    assert sum(r.created for r in results) == 1


# --- 3. the lockout cannot be sidestepped with X-Forwarded-For -----------------------------------
def _attempt(client: Client, ip: str, forwarded: str | None = None) -> int:
    extra = {"REMOTE_ADDR": ip}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return int(client.post("/accounts/login/", {"username": "alice", "password": "wrong-1"},
                           **extra).status_code)


@pytest.mark.django_db
def test_a_forwarded_address_from_an_untrusted_peer_is_ignored(owner: Any,
                                                               settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    settings.TRUSTED_PROXIES = []
    client = Client()
    for number in range(3):
        _attempt(client, "203.0.113.9", forwarded=f"198.51.100.{number}")
    # Every attempt counted against the socket's own address: locked.
    assert _attempt(client, "203.0.113.9", forwarded="198.51.100.77") == 429


@pytest.mark.django_db
def test_a_trusted_proxys_forwarded_address_is_the_client(owner: Any, settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    client = Client()
    for _ in range(3):
        _attempt(client, "127.0.0.1", forwarded="198.51.100.1")
    assert _attempt(client, "127.0.0.1", forwarded="198.51.100.1") == 429
    # Another client behind the same proxy is not locked out by the first one.
    assert _attempt(Client(), "127.0.0.1", forwarded="198.51.100.2") == 200
    # A client that prepends its own address gets the right-most untrusted one: itself.
    assert _attempt(Client(), "127.0.0.1", forwarded="198.51.100.2, 198.51.100.1") == 429


@pytest.mark.django_db
def test_a_username_is_locked_from_any_address_after_the_higher_limit(
    owner: Any, settings: Any
) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    settings.LOGIN_USERNAME_FAILURE_LIMIT = 6
    for number in range(6):
        _attempt(Client(), f"203.0.113.{number + 1}")  # two tries each from three addresses
        _attempt(Client(), f"203.0.113.{number + 1}")
    fresh = Client().post("/accounts/login/", {"username": "alice", "password": PASSWORD},
                          REMOTE_ADDR="192.0.2.50")
    assert fresh.status_code == 429


# --- 2. and 4. sessions and access changes reach open sockets at once ----------------------------
async def _signed_in_socket(client: Client, conversation: Conversation
                            ) -> WebsocketCommunicator:
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    socket = WebsocketCommunicator(application, f"/ws/c/{conversation.pk}/", headers=[
        ORIGIN, (b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode())])
    connected, _ = await socket.connect()
    assert connected
    hello = await socket.receive_json_from()
    assert hello["type"] == "hello"
    return socket


async def _closed_with(socket: WebsocketCommunicator, code: int) -> dict[str, Any]:
    frame = await socket.receive_json_from(timeout=1)
    assert frame["type"] == "revoked"
    closing = await socket.receive_output(timeout=1)
    assert closing == {"type": "websocket.close", "code": code}
    return dict(frame)


def _login(user: Any) -> Client:
    client = Client()
    client.force_login(user)  # a real session, with the password's session hash
    return client


async def _owner_socket(owner: Any) -> tuple[Client, WebsocketCommunicator]:
    """The owner signed in, with a socket open on a new conversation of theirs."""
    conversation = await database_sync_to_async(_chat)(owner)
    client = await database_sync_to_async(_login)(owner)
    return client, await _signed_in_socket(client, conversation)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_logging_out_closes_that_users_open_sockets(owner: Any) -> None:
    client, socket = await _owner_socket(owner)
    await database_sync_to_async(client.post)("/accounts/logout/")
    frame = await _closed_with(socket, 4401)
    assert frame["reason"] == "session"


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_password_changed_elsewhere_closes_other_sessions_sockets(owner: Any) -> None:
    conversation = await database_sync_to_async(_chat)(owner)
    laptop = await database_sync_to_async(_login)(owner)
    phone = await database_sync_to_async(_login)(owner)
    on_laptop = await _signed_in_socket(laptop, conversation)
    on_phone = await _signed_in_socket(phone, conversation)
    response = await database_sync_to_async(phone.post)("/accounts/password/", {
        "old_password": PASSWORD, "new_password1": "a-new-long-passphrase-42",
        "new_password2": "a-new-long-passphrase-42"})
    assert response.status_code == 302
    await _closed_with(on_laptop, 4401)  # the other session ended
    # Django gave the phone's session a new key with the new password: sockets opened with the
    # old key close too, and the phone opens new ones with its new cookie.
    await _closed_with(on_phone, 4401)
    again = await _signed_in_socket(phone, conversation)
    await again.send_json_to({"type": "ping", "ref": 7})
    assert (await again.receive_json_from(timeout=1)) == {"type": "pong", "ref": 7}
    await again.disconnect()
    laptop_again = WebsocketCommunicator(application, f"/ws/c/{conversation.pk}/", headers=[
        ORIGIN, (b"cookie", f"{settings.SESSION_COOKIE_NAME}="
                            f"{laptop.cookies[settings.SESSION_COOKIE_NAME].value}".encode())])
    connected, code = await laptop_again.connect()
    assert not connected and code == 4401  # the old session cannot open a new one either


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_an_admin_deactivating_a_user_closes_their_sockets(owner: Any) -> None:
    _client, socket = await _owner_socket(owner)

    def deactivate() -> None:
        owner.is_active = False
        owner.save()

    await database_sync_to_async(deactivate)()
    await _closed_with(socket, 4401)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_refused_change_of_a_team_conversation_drops_nobody(
    owner: Any, member: Any
) -> None:
    # Outside a transaction `on_commit` runs at once: the teammates' revocation went out
    # before the row was saved, and even when a later value was refused.
    conversation = await database_sync_to_async(_team_chat)(owner, member)
    teammates = await _signed_in_socket(await database_sync_to_async(_login)(member),
                                        conversation)
    with pytest.raises(ServiceError):
        await database_sync_to_async(lambda: services.conversation_update(
            owner, Conversation.objects.get(pk=conversation.pk), team_id=None, title="  "))()
    await teammates.send_json_to({"type": "ping", "ref": 1})
    assert (await teammates.receive_json_from(timeout=1))["type"] == "pong"
    assert await database_sync_to_async(
        lambda: Conversation.objects.get(pk=conversation.pk).team_id)() is not None
    await teammates.disconnect()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_making_a_team_conversation_private_drops_teammates_at_once(
    owner: Any, member: Any
) -> None:
    conversation = await database_sync_to_async(_team_chat)(owner, member)
    owners = await _signed_in_socket(await database_sync_to_async(_login)(owner), conversation)
    teammates = await _signed_in_socket(await database_sync_to_async(_login)(member),
                                        conversation)
    await database_sync_to_async(lambda: services.conversation_update(
        owner, Conversation.objects.get(pk=conversation.pk), team_id=None))()
    while (frame := await teammates.receive_json_from(timeout=1))["type"] != "revoked":
        assert frame["type"] == "conversation"  # the settings changed: nothing else
    assert frame["reason"] == "access"
    assert (await teammates.receive_output(timeout=1)) == {"type": "websocket.close",
                                                           "code": 4403}
    await owners.send_json_to({"type": "ping", "ref": 1})
    while (frame := await owners.receive_json_from(timeout=1))["type"] != "pong":
        assert frame["type"] == "conversation"
    await owners.disconnect()


# --- 5. deeply nested JSON is a clear 400, never a 500 -------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_deeply_nested_json_is_refused_clearly_everywhere(owner: Any, api_server: Any,
                                                          make_token: Any) -> None:
    import httpx

    nested = b"[" * 200_000 + b"]" * 200_000
    reply = httpx.post(f"{api_server.url}/v1/chat/completions", content=nested, headers={
        "Authorization": f"Bearer {make_token(owner)}", "Content-Type": "application/json"})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_json"
    upload = signed_in(owner).post("/import/", {"file": _named(nested, "deep.json")})
    assert upload.status_code == 302  # back to the list, with the reason shown
    assert not Conversation.objects.exists()
    assert "500" not in api_server.log_text().split("/v1/chat/completions")[-1][:200]


def _named(data: bytes, name: str) -> Any:
    import io

    handle = io.BytesIO(data)
    handle.name = name
    return handle


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_deeply_nested_frame_gets_an_error_frame_and_the_socket_stays(owner: Any) -> None:
    _client, socket = await _owner_socket(owner)
    await socket.send_to(text_data="[" * 30_000 + "]" * 30_000)
    frame = await socket.receive_json_from(timeout=1)
    assert frame["type"] == "error" and frame["code"] == "bad_frame"
    await socket.send_json_to({"type": "ping", "ref": 2})
    assert (await socket.receive_json_from(timeout=1)) == {"type": "pong", "ref": 2}
    await socket.disconnect()


# --- 6. only those who may continue may switch the branch ----------------------------------------
@pytest.mark.django_db(transaction=True)
def test_view_only_members_and_oversight_admins_cannot_switch_the_branch(
    emulated: Any, owner: Any, member: Any, admin_user: Any
) -> None:
    team = Group.objects.create(name="readers")
    owner.groups.add(team)
    member.groups.add(team)
    TeamSettings.objects.create(team=team, members_can_continue=False)
    conversation = _chat(owner)
    services.conversation_update(owner, conversation, team_id=team.pk)
    post_message(signed_in(owner), conversation, "One")
    first = Message.objects.filter(role="assistant").get()
    response = signed_in(owner).post(f"/c/{conversation.pk}/m/{first.pk}/regenerate/",
                                     HTTP_ACCEPT="application/json")
    assert response.status_code == 201
    conversation.refresh_from_db()
    tip = conversation.active_leaf_id
    for user in (member, admin_user):
        refused = signed_in(user).post(f"/c/{conversation.pk}/m/{first.pk}/switch/",
                                       HTTP_ACCEPT="application/json")
        assert refused.status_code == 404
        conversation.refresh_from_db()
        assert conversation.active_leaf_id == tip  # unchanged for everyone
    allowed = signed_in(owner).post(f"/c/{conversation.pk}/m/{first.pk}/switch/",
                                    HTTP_ACCEPT="application/json")
    assert allowed.status_code == 200


# --- 7. the reaper runs from process start, visitor or not ---------------------------------------
@pytest.mark.django_db(transaction=True)
def test_a_restarted_server_reaps_answers_left_streaming_without_any_visitor(
    owner: Any, django_db_blocker: Any
) -> None:
    conversation = _chat(owner)
    answer = queue_answer(owner, conversation, "Left behind by a crash")
    Message.objects.filter(pk=answer.pk).update(
        status=MessageStatus.STREAMING, content="half an ans",
        heartbeat_at=timezone.now() - timedelta(seconds=30))
    server = ServerProcess(child_env(GENERATION_STALE_SECONDS="5", REAPER_INTERVAL_SECONDS="1"),
                           ARTIFACTS / "logs" / "daphne-reaper-at-start.log")
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            answer.refresh_from_db()
            if answer.status != MessageStatus.STREAMING:
                break
            time.sleep(0.2)
    finally:
        server.stop()
    assert answer.status == MessageStatus.INTERRUPTED
    assert answer.content == "half an ans"  # the text is kept


# --- 11. an oversized frame is refused with a close frame (1009), not a dropped line -------------
@pytest.mark.django_db(transaction=True)
def test_a_ten_megabyte_frame_closes_the_socket_with_1009(owner: Any, live_app: Any) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    conversation = _chat(owner)
    cookie = _login(owner).cookies[settings.SESSION_COOKIE_NAME].value
    url = live_app.url.replace("http://", "ws://") + f"/ws/c/{conversation.pk}/"
    # Uncompressed: tests/web/test_ws_compression.py sends the same message deflated.
    with connect(url, origin=live_app.url, max_size=None,  # type: ignore[arg-type]
                 compression=None,
                 additional_headers={"Cookie": f"{settings.SESSION_COOKIE_NAME}={cookie}"}
                 ) as socket:
        assert '"hello"' in str(socket.recv(timeout=5))
        socket.send("x" * 10 * 1024 * 1024)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                socket.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
