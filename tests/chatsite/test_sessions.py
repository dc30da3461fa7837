"""Sessions (chatsite/sessions.py): Django's database store with its per-request read compiled.
What a signed-in person sees must be exactly what Django's own store gives."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.contrib.sessions.models import Session
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chatsite.sessions import SessionStore
from tests.support import signed_in

pytestmark = pytest.mark.django_db


def _signed_in_page(client: Any) -> bool:
    response = client.get("/")
    return response.status_code == 200 and "/login" not in response.get("Location", "")


def test_a_signed_in_user_keeps_the_session_from_request_to_request(owner: Any) -> None:
    client = signed_in(owner)
    assert settings.SESSION_ENGINE == "chatsite.sessions"
    assert isinstance(client.session, SessionStore)
    assert _signed_in_page(client) and _signed_in_page(client)


def test_an_expired_session_signs_the_user_out(owner: Any) -> None:
    client = signed_in(owner)
    assert _signed_in_page(client)
    Session.objects.update(expire_date=timezone.now() - timedelta(seconds=1))
    response = client.get("/")
    assert response.status_code == 302 and "login" in response["Location"]


def test_a_deleted_session_signs_the_user_out_and_another_users_session_is_untouched(
        owner: Any, member: Any) -> None:
    mine, theirs = signed_in(owner), signed_in(member)
    assert _signed_in_page(mine) and _signed_in_page(theirs)
    Session.objects.filter(session_key=mine.session.session_key).delete()
    assert mine.get("/").status_code == 302
    assert _signed_in_page(theirs)


def test_an_unknown_or_missing_key_reads_as_no_session() -> None:
    for key in ("x" * 32, None):
        store = SessionStore(key)
        assert store.load() == {}
        assert store.session_key is None


def test_the_session_read_is_one_statement(owner: Any) -> None:
    key = signed_in(owner).session.session_key
    with CaptureQueriesContext(connection) as seen:
        loaded = SessionStore(key).load()
    assert str(loaded["_auth_user_id"]) == str(owner.pk)
    assert len(seen.captured_queries) == 1
