"""The API tokens page: create (shown once), list, revoke; only hashes are stored."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest
from django.test import Client

from conversations.api import tokens
from conversations.models import ApiToken, AuditEvent

pytestmark = pytest.mark.django_db

PAGE = "/account/tokens/"
TOKEN = re.compile(r"lc-[A-Za-z0-9_-]{43}")


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def create(client: Client, name: str = "nightly-cron") -> str:
    response = client.post(PAGE, {"name": name}, follow=True)  # POST-redirect-GET
    assert response.status_code == 200
    assert response.redirect_chain == [(PAGE, 302)]
    found = TOKEN.findall(response.content.decode())
    assert len(set(found)) == 1, "the new token is shown exactly once"
    assert response["Cache-Control"] == "no-store"
    return found[0]


def api_models(secret: str) -> int:
    """GET /v1/models in process, as a script would send it."""
    return Client().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code


def test_the_user_menu_links_to_the_tokens_page(owner: Any) -> None:
    html = signed_in(owner).get("/").content.decode()
    assert f'href="{PAGE}"' in html and "API tokens" in html


def test_signed_out_visitors_are_sent_to_sign_in(client: Client, owner: Any) -> None:
    assert client.get(PAGE)["Location"].startswith("/accounts/login/")
    assert client.post(PAGE, {"name": "x"})["Location"].startswith("/accounts/login/")


def test_a_new_token_is_shown_once_and_only_its_hash_is_stored(owner: Any) -> None:
    client = signed_in(owner)
    secret = create(client)
    row = ApiToken.objects.get()
    assert row.user == owner and row.name == "nightly-cron"
    assert row.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert row.prefix == secret[:10] and row.revoked_at is None
    stored = " ".join(str(v) for v in ApiToken.objects.values().get().values())
    assert secret not in stored and secret[10:] not in stored
    again = client.get(PAGE).content.decode()
    assert secret not in again and TOKEN.search(again) is None
    assert f"{row.prefix}…" in again and "nightly-cron" in again
    assert api_models(secret) == 200


def test_revoking_takes_effect_at_once(owner: Any) -> None:
    client = signed_in(owner)
    secret = create(client)
    assert api_models(secret) == 200
    row = ApiToken.objects.get()
    response = client.post(f"{PAGE}{row.pk}/revoke/", follow=True)
    assert response.status_code == 200 and "revoked" in response.content.decode()
    assert api_models(secret) == 401
    row.refresh_from_db()
    assert row.revoked_at is not None
    assert client.post(f"{PAGE}{row.pk}/revoke/").status_code == 302  # twice is harmless


def test_another_user_cannot_revoke_my_token(owner: Any, outsider: Any) -> None:
    secret = create(signed_in(owner))
    row = ApiToken.objects.get()
    assert signed_in(outsider).post(f"{PAGE}{row.pk}/revoke/").status_code == 404
    assert signed_in(outsider).post(f"{PAGE}999999/revoke/").status_code == 404
    row.refresh_from_db()
    assert row.revoked_at is None and api_models(secret) == 200
    assert "nightly-cron" not in signed_in(outsider).get(PAGE).content.decode()


def test_revoking_needs_a_post(owner: Any) -> None:
    create(signed_in(owner))
    row = ApiToken.objects.get()
    assert signed_in(owner).get(f"{PAGE}{row.pk}/revoke/").status_code == 405
    row.refresh_from_db()
    assert row.revoked_at is None


def test_a_token_needs_a_name(owner: Any) -> None:
    response = signed_in(owner).post(PAGE, {"name": "   "})
    assert response.status_code == 400 and TOKEN.search(response.content.decode()) is None
    assert not ApiToken.objects.exists()


def test_active_tokens_are_capped(owner: Any) -> None:
    for number in range(tokens.MAX_ACTIVE_TOKENS):
        tokens.create_token(owner, f"t{number}")
    response = signed_in(owner).post(PAGE, {"name": "one too many"})
    assert response.status_code == 400 and "Revoke one first" in response.content.decode()
    assert ApiToken.objects.count() == tokens.MAX_ACTIVE_TOKENS


def test_creating_and_revoking_are_audited_without_the_secret(owner: Any) -> None:
    client = signed_in(owner)
    secret = create(client)
    row = ApiToken.objects.get()
    client.post(f"{PAGE}{row.pk}/revoke/")
    events = list(AuditEvent.objects.filter(target=f"token {row.pk}").order_by("at"))
    assert [e.action for e in events] == ["token.created", "token.revoked"]
    assert all(e.actor == owner for e in events)
    dumped = " ".join(f"{e.target} {e.details}" for e in events)
    assert secret not in dumped and row.digest not in dumped


def test_the_token_page_shows_the_api_base_url(owner: Any, settings: Any) -> None:
    settings.SITE_URL = "https://chat.example.com"
    assert "https://chat.example.com/v1" in signed_in(owner).get(PAGE).content.decode()


def test_a_reload_after_creating_shows_nothing_and_creates_nothing(owner: Any) -> None:
    client = signed_in(owner)
    response = client.post(PAGE, {"name": "reloaded"})
    assert response.status_code == 302 and response["Location"] == PAGE  # no secret in a URL
    first = client.get(PAGE)
    assert TOKEN.search(first.content.decode())
    again = client.get(PAGE)  # the reload
    assert TOKEN.search(again.content.decode()) is None
    assert ApiToken.objects.filter(user=owner).count() == 1


def test_a_token_left_in_the_session_is_not_shown_much_later(owner: Any) -> None:
    from conversations.web import token_views

    client = signed_in(owner)
    client.post(PAGE, {"name": "forgotten"})
    session = client.session
    session[token_views.SESSION_KEY]["at"] -= token_views.SHOW_SECONDS + 1
    session.save()
    assert TOKEN.search(client.get(PAGE).content.decode()) is None
    assert token_views.SESSION_KEY not in client.session
