"""Conversations made at a given moment (time-machine freezes the clock, so `updated_at` and
every auto_now field are what a real conversation of that age would have)."""

from __future__ import annotations

import datetime
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.core.cache import cache

from conversations.chat import services
from conversations.models import Attachment, Conversation, Message, MessageStatus
from conversations.retention.policy import CACHE_KEY
from conversations.sharing.links import create_share
from tests.images import image_corpus as corpus
from tests.support import model, queue_answer, signed_in

NOW = datetime.datetime(2026, 11, 20, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


@pytest.fixture(autouse=True)
def _fresh_policy_cache() -> Iterator[None]:
    """The warnings read the policy from the cache; each test starts and ends without it."""
    cache.delete(CACHE_KEY)
    yield
    cache.delete(CACHE_KEY)


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    return root


def stored_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def upload(user: Any) -> Attachment:
    handle = io.BytesIO(corpus.png_rgba())
    handle.name = "photo.png"
    response = signed_in(user).post("/uploads/", {"image": handle},
                                    HTTP_ACCEPT="application/json")
    assert response.status_code == 201, response.content
    return Attachment.objects.get(pk=response.json()["id"])


def chat_at(user: Any, when: datetime.datetime, title: str = "chat", *, team: Any = None,
            image: bool = False, share: bool = False, answering: bool = False
            ) -> Conversation:
    """A conversation whose last activity was `when`: a prompt and its answer, optionally an
    image and a share link. `answering`: the answer is still being written."""
    slug = "llama-3.2-11b-vision" if image else "llama-3.2-3b"
    with time_machine.travel(when, tick=False):
        conversation = services.conversation_create(user, model=model(slug), title=title)
        if team is not None:
            services.conversation_update(user, conversation, team_id=team.pk)
        ids = [upload(user).pk] if image else []
        answer = queue_answer(user, conversation, f"About {title}", attachment_ids=ids)
        if not answering:
            Message.objects.filter(pk=answer.pk).update(status=MessageStatus.COMPLETE,
                                                        content="An answer.")
        if share:
            create_share(user, conversation)
    if answering:
        # Streaming with a heartbeat ahead of the real clock: a queued answer "31 days old" is
        # what the reaper of any server on this database marks interrupted, mid-test.
        Message.objects.filter(pk=answer.pk).update(
            status=MessageStatus.STREAMING,
            heartbeat_at=datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1))
    return Conversation.objects.get(pk=conversation.pk)
