"""Helpers shared by the chat, answer, image and API tests: providers on the emulator, the
seeded catalogue, signed-in clients, posting, and queued answers. The emulator fixtures
themselves (`chat_emulator`, `emulated`) are in tests/conftest.py."""

from __future__ import annotations

import uuid
from typing import Any

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
