"""Helpers shared by the chat, answer, image and API tests: providers on the emulator, the
seeded catalogue, signed-in clients, posting, and queued answers. The emulator fixtures
themselves (`chat_emulator`, `emulated`) are in tests/conftest.py."""

from __future__ import annotations

import secrets
import socket
import time
import uuid
from typing import Any

import httpx
from django.conf import settings
from django.test import Client

from providers.emulators import EmulatorServer
from providers.models import ModelConfig, Provider

FAST = {"retry_base_delay": 0.005, "retry_max_delay": 0.02, "max_retry_after": 1.0}


def point_providers_at(server: EmulatorServer) -> None:
    creds = server.credentials
    values = {
        "cloudflare": {"account_id": creds.cloudflare_account_id,
                       "api_token": creds.cloudflare_api_token},
        "dashscope": {"api_key": creds.dashscope_api_key},
        "qianfan": {"api_key": creds.qianfan_ak, "secret_key": creds.qianfan_sk},
    }
    for provider in Provider.objects.all():
        provider.base_url = server.base_urls[provider.kind]
        provider.set_credentials(values[provider.kind])
        provider.options = {**provider.options, **FAST}
        provider.save()


def seed_catalogue() -> None:
    """Transactional tests flush the database, seed rows included: put them back."""
    from providers import catalogue

    catalogue.seed(Provider, ModelConfig)


def model(slug: str = "llama-3.2-3b") -> ModelConfig:
    seed_catalogue()
    return ModelConfig.objects.get(slug=slug)


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def post_message(client: Client, conversation: Any, text: str, **extra: Any) -> Any:
    data = {"text": text, "client_id": str(extra.pop("client_id", uuid.uuid4())), **extra}
    return client.post(f"/c/{conversation.pk}/messages/", data, HTTP_ACCEPT="application/json")


def post_live(server_url: str, user: Any, conversation: Any, text: str) -> Any:
    """POST a message to a running server as `user` (signed in, CSRF-checked, as a page does);
    the httpx response."""
    session = signed_in(user).cookies[settings.SESSION_COOKIE_NAME].value
    csrf = secrets.token_hex(16)  # any 32 characters; the header repeats the cookie
    return httpx.post(
        f"{server_url}/c/{conversation.pk}/messages/",
        data={"text": text, "client_id": str(uuid.uuid4())},
        headers={"Cookie": f"{settings.SESSION_COOKIE_NAME}={session}; csrftoken={csrf}",
                 "X-CSRFToken": csrf, "Accept": "application/json"}, timeout=30)


def queue_answer(user: Any, conversation: Any, text: str,
                 attachment_ids: list[Any] | None = None) -> Any:
    """A prompt and its queued answer, as `services.message_post` stores them, without starting
    the answer: for tests that connect viewers first and then run the runner themselves.
    (The service starts every answer it stores once its transaction commits.)"""
    from django.db import transaction

    from conversations.images.attachments import attach
    from conversations.models import Conversation, Message, MessageStatus
    from conversations.usage import accounting

    with transaction.atomic():
        locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
        seq = locked.next_seq
        prompt = Message.objects.create(
            conversation=locked, parent=locked.active_leaf, seq=seq, role=Message.Role.USER,
            author=user, client_id=uuid.uuid4(), content=text, status=MessageStatus.COMPLETE)
        attach(user, prompt, attachment_ids or [], locked.model)
        answer = Message.objects.create(
            conversation=locked, parent=prompt, seq=seq + 1, role=Message.Role.ASSISTANT,
            model=locked.model, status=MessageStatus.QUEUED)
        accounting.record_start(user, locked.model, team_id=locked.team_id, message=answer)
        locked.next_seq = seq + 2
        locked.active_leaf = answer
        locked.save(update_fields=["next_seq", "active_leaf", "updated_at"])
    return answer


def wait_final(message_id: Any, timeout: float = 30.0) -> Any:
    """The message once it reached a final state (a Celery worker may be writing it)."""
    import time

    from conversations.models import ACTIVE_STATUSES, Message

    deadline = time.monotonic() + timeout
    while True:
        message = Message.objects.get(pk=message_id)
        if message.status not in ACTIVE_STATUSES or time.monotonic() > deadline:
            return message
        time.sleep(0.05)


def slow_http(host: str, port: int, request: bytes, chunk: int = 4096, wait_first: float = 0.0,
              pause_every: int = 64) -> tuple[bytes, bytes]:
    """Send `request` over a socket with a small receive buffer (set before connecting, so the
    window it offers is small from the start) and read the reply a little at a time with
    pauses, so the server's socket buffer fills and its writes are partial. `wait_first`:
    seconds to read nothing first. Returns the reply's head and its body, unchunked when the
    reply was chunked."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, chunk)
        sock.connect((host, port))
        sock.sendall(request)
        time.sleep(wait_first)
        received = bytearray()
        reads = 0
        while data := sock.recv(chunk):
            received += data
            reads += 1
            if reads % pause_every == 0:
                time.sleep(0.01)
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = unchunk(body)
    return head, body


def unchunk(body: bytes) -> bytes:
    """A chunked HTTP body's data; every chunk must end with its CRLF."""
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        assert rest[size:size + 2] == b"\r\n", "a chunk must end with CRLF"
        out += rest[:size]
        body = rest[size + 2:]
    return bytes(out)
