"""Login throttling (threat T21): lockout, same answer for unknown users, reset, both logins."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.http import HttpResponse
from django.test import Client
from django.utils import timezone

from conversations.models import AuditEvent
from tests.admin.conftest import without_csrf
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

LIMIT = 3
SITE_LOGIN = "/accounts/login/"
ADMIN_LOGIN = "/admin/login/"


@pytest.fixture(autouse=True)
def small_limit(settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = LIMIT


def attempt(client: Client, username: str, password: str, url: str = SITE_LOGIN,
            ip: str = "127.0.0.1") -> HttpResponse:
    return client.post(url, {"username": username, "password": password}, REMOTE_ADDR=ip)


def signed_in(client: Client) -> bool:
    return client.get("/").status_code == 200


def test_the_throttle_locks_per_username_and_address_for_the_configured_time() -> None:
    from django.conf import settings

    assert settings.AXES_LOCKOUT_PARAMETERS == [["username", "ip_address"]]
    assert settings.AXES_RESET_ON_SUCCESS is True
    minutes = int(os.environ.get("LOGIN_COOLOFF_MINUTES", "15"))
    assert timedelta(minutes=minutes) == settings.AXES_COOLOFF_TIME
    assert settings.AUTHENTICATION_BACKENDS[0] == "axes.backends.AxesStandaloneBackend"


def test_repeated_wrong_passwords_lock_the_account_with_a_429_page(client: Client,
                                                                   owner: Any) -> None:
    for _ in range(LIMIT - 1):
        assert attempt(client, "alice", "wrong-pass-1").status_code == 200
    locked = attempt(client, "alice", "wrong-pass-1")
    assert locked.status_code == 429
    body = locked.content.decode()
    assert "Too many attempts" in body and "alice" not in body
    assert "The pause lasts 15 min" in body or "LOGIN_COOLOFF_MINUTES" in os.environ
    assert 'href="/static/css/app.css"' in body  # the product's own page, not a bare text
    assert AuditEvent.objects.filter(action="login.locked_out").exists()


def test_the_right_password_is_refused_during_the_lockout(client: Client, owner: Any) -> None:
    for _ in range(LIMIT):
        attempt(client, "alice", "wrong-pass-1")
    response = attempt(client, "alice", PASSWORD)
    assert response.status_code == 429
    assert not signed_in(client)


def test_an_unknown_user_gets_the_same_answer_as_a_wrong_password(client: Client,
                                                                  owner: Any) -> None:
    wrong = attempt(client, "alice", "wrong-pass-1")
    owner.delete()
    unknown = attempt(client, "alice", "wrong-pass-1")
    assert wrong.status_code == unknown.status_code == 200
    assert without_csrf(wrong.content) == without_csrf(unknown.content)


def test_an_unknown_user_is_locked_out_exactly_like_a_known_one(owner: Any) -> None:
    known, unknown = Client(), Client()
    known_answers = [attempt(known, "alice", "wrong-pass-1").status_code for _ in range(LIMIT)]
    unknown_answers = [attempt(unknown, "nobody", "wrong-pass-1").status_code
                       for _ in range(LIMIT)]
    assert known_answers == unknown_answers == [200] * (LIMIT - 1) + [429]
    known_page = attempt(known, "alice", PASSWORD)
    unknown_page = attempt(unknown, "nobody", PASSWORD)
    assert known_page.status_code == unknown_page.status_code == 429
    assert without_csrf(known_page.content) == without_csrf(unknown_page.content)


def test_the_admin_login_is_throttled_too(client: Client, admin_user: Any) -> None:
    answers = [attempt(client, "root", "wrong-pass-1", ADMIN_LOGIN).status_code
               for _ in range(LIMIT)]
    assert answers[-1] == 429 and set(answers[:-1]) == {200}
    assert attempt(client, "root", PASSWORD, ADMIN_LOGIN).status_code == 429
    # One lock for the account, whichever form was used.
    assert attempt(client, "root", PASSWORD, SITE_LOGIN).status_code == 429
    assert client.get("/admin/").status_code == 302


def test_a_success_resets_the_count(client: Client, owner: Any) -> None:
    for _ in range(LIMIT - 1):
        attempt(client, "alice", "wrong-pass-1")
    assert attempt(client, "alice", PASSWORD).status_code == 302
    client.post("/accounts/logout/")
    for _ in range(LIMIT - 1):
        assert attempt(client, "alice", "wrong-pass-1").status_code == 200
    assert attempt(client, "alice", PASSWORD).status_code == 302


def test_the_lock_is_per_address_so_a_guesser_cannot_lock_the_owner_out(
    client: Client, owner: Any
) -> None:
    for _ in range(LIMIT):
        attempt(client, "alice", "wrong-pass-1", ip="203.0.113.9")
    assert attempt(client, "alice", PASSWORD, ip="203.0.113.9").status_code == 429
    assert attempt(Client(), "alice", PASSWORD, ip="198.51.100.7").status_code == 302


def test_the_lock_ends_after_the_cool_off(client: Client, owner: Any, settings: Any) -> None:
    for _ in range(LIMIT):
        attempt(client, "alice", "wrong-pass-1")
    assert attempt(client, "alice", PASSWORD).status_code == 429
    # Age the attempts past the cool-off instead of waiting for it.
    AccessAttempt.objects.update(
        attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(minutes=1))
    assert attempt(client, "alice", PASSWORD).status_code == 302


def test_the_password_is_never_stored_by_the_throttle(client: Client, owner: Any) -> None:
    attempt(client, "alice", "wrong-pass-secret-77")
    stored = " ".join(AccessAttempt.objects.values_list("post_data", flat=True))
    assert "wrong-pass-secret-77" not in stored
