"""Single sign-on against a real OpenID Connect provider process (tests/oidc_provider)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import requests
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.urls import reverse

from chatsite.models import ExternalIdentity
from conversations.models import AuditEvent
from tests.conftest import PASSWORD
from tests.oidc_provider.process import CLIENT_SECRET, person
from tests.sso.flow import round_trip, to_provider

pytestmark = pytest.mark.django_db
User = get_user_model()


def _session_user(client: Any) -> Any:
    user_id = client.session.get("_auth_user_id")
    return User.objects.get(pk=user_id) if user_id else None


# --- who gets in, as whom, in which team ---------------------------------------------------------
def test_a_new_person_signs_in_and_lands_in_the_mapped_team(client: Any, sso: Any,
                                                            settings: Any) -> None:
    settings.OIDC_TEAMS_CLAIM = "groups"
    settings.OIDC_TEAM_MAP = {"eng": "Engineering"}
    engineering = Group.objects.create(name="Engineering")
    response = round_trip(client, sso, "dana")
    assert response.status_code == 302 and response["Location"] == reverse("home")
    user = _session_user(client)
    assert (user.username, user.email, user.first_name) == ("dana", "dana@corp.example", "Dana")
    assert not user.has_usable_password()
    assert list(user.groups.all()) == [engineering]
    identity = ExternalIdentity.objects.get(user=user)
    assert (identity.issuer, identity.subject) == (sso.issuer, "sub-dana")
    event = AuditEvent.objects.get(action="sso.signed_in")
    assert event.actor_id == user.pk
    assert event.details["linked_by"] == "created"
    assert event.details["teams_added"] == ["Engineering"]
    assert client.get(reverse("home")).status_code == 200


def test_accounts_are_created_even_with_sign_up_closed(client: Any, sso: Any,
                                                      settings: Any) -> None:
    settings.ALLOW_SIGNUP = False
    assert round_trip(client, sso, "dana").status_code == 302
    assert User.objects.filter(username="dana").exists()


def test_an_existing_account_is_matched_by_its_verified_email(client: Any, sso: Any,
                                                              owner: Any) -> None:
    assert round_trip(client, sso, "alice").status_code == 302
    assert _session_user(client) == owner
    assert ExternalIdentity.objects.get(subject="sub-alice").user == owner
    client.logout()
    # the second time by the identity (issuer + subject), even if the e-mail changed since
    sso.fault(claims={"email": "alice.new@example.com"})
    assert round_trip(client, sso, "alice").status_code == 302
    assert _session_user(client) == owner
    assert AuditEvent.objects.filter(action="sso.signed_in").latest("pk").details[
        "linked_by"] == "identity"
    assert User.objects.count() == 1


def test_an_unverified_email_never_matches_an_existing_account(client: Any, sso: Any,
                                                               owner: Any) -> None:
    sso.fault(unverified_email=True)
    response = round_trip(client, sso, "alice")
    assert response.status_code == 403
    assert b"Your e-mail address is not verified" in response.content
    assert _session_user(client) is None
    assert not ExternalIdentity.objects.exists()
    assert AuditEvent.objects.get(action="sso.refused").details["reason"] == "email_unverified"


def test_a_disallowed_email_domain_is_refused_and_nothing_is_created(client: Any, sso: Any,
                                                                     settings: Any) -> None:
    settings.OIDC_ALLOWED_DOMAINS = ["corp.example"]
    response = round_trip(client, sso, "erin")
    assert response.status_code == 403
    assert b"This e-mail domain may not sign in here" in response.content
    assert not User.objects.filter(email="erin@other.example").exists()
    assert round_trip(client, sso, "dana").status_code == 302  # the allowed domain gets in


def test_an_inactive_account_is_refused(client: Any, sso: Any, owner: Any) -> None:
    owner.is_active = False
    owner.save()
    response = round_trip(client, sso, "alice")
    assert response.status_code == 403
    assert b"This account is disabled" in response.content
    assert _session_user(client) is None


def test_a_disabled_account_signed_in_through_the_provider_is_signed_out_at_once(
        client: Any, sso: Any) -> None:
    assert round_trip(client, sso, "dana").status_code == 302
    assert client.get(reverse("home")).status_code == 200
    User.objects.filter(username="dana").update(is_active=False)
    assert client.get(reverse("home")).status_code == 302  # to the sign-in page


def test_a_provider_username_never_takes_over_a_local_account(client: Any, sso: Any,
                                                              owner: Any) -> None:
    sso.reset({"mallory": person("mallory", "mallory@evil.example",
                                 preferred_username="alice")})
    assert round_trip(client, sso, "mallory").status_code == 302
    user = _session_user(client)
    assert user != owner and user.username == "alice-2"
    assert not ExternalIdentity.objects.filter(user=owner).exists()


def test_two_accounts_with_the_same_email_are_not_guessed_between(client: Any, sso: Any,
                                                                  owner: Any) -> None:
    User.objects.create_user("alice2", "ALICE@example.com", PASSWORD)
    response = round_trip(client, sso, "alice")
    assert response.status_code == 403
    assert _session_user(client) is None


# --- the checks on the provider's answer --------------------------------------------------------
@pytest.mark.parametrize(("fault", "status", "text"), [
    ("wrong_issuer", 403, b"did not come from the identity provider this site trusts"),
    ("bad_signature", 403, b"was not signed with its key"),
    ("unsigned", 403, b"was not signed with its key"),
    ("hs256_client_secret", 403, b"was not signed with its key"),
    ("expired_id_token", 403, b"has expired"),
    ("wrong_nonce", 403, b"does not belong to the sign-in started in this browser"),
    ("wrong_audience", 403, b"was meant for another site"),
    ("expired_code", 400, b"This sign-in has expired"),
    ("reused_code", 400, b"This sign-in has expired"),
    ("discovery_wrong_issuer", 403, b"did not come from the identity provider this site trusts"),
])
def test_an_untrustworthy_answer_is_refused_with_a_clear_page(
        client: Any, sso: Any, fault: str, status: int, text: bytes) -> None:
    if fault == "discovery_wrong_issuer":
        sso.fault(**{fault: True})
        response = client.get(reverse("oidc_login"))
    else:
        sso.fault(**{fault: True})
        response = round_trip(client, sso, "dana")
    assert response.status_code == status
    assert text in response.content
    assert b'class="card error-card"' in response.content  # the product's layout
    assert _session_user(client) is None
    assert not User.objects.filter(username="dana").exists()
    assert AuditEvent.objects.filter(action="sso.refused").exists()


def test_a_callback_with_a_state_this_browser_did_not_start_is_refused(client: Any,
                                                                       sso: Any) -> None:
    callback = to_provider(client, sso, "dana")
    other = client.__class__()
    response = other.get(callback)  # another browser replays the answer
    assert response.status_code == 400
    assert b"This sign-in could not be finished" in response.content
    assert sso.stats()["token_requests"] == 0  # refused before the code was even used


def test_an_answer_works_once(client: Any, sso: Any) -> None:
    callback = to_provider(client, sso, "dana")
    assert client.get(callback).status_code == 302
    client.logout()
    response = client.get(callback)
    assert response.status_code == 400
    assert sso.stats()["token_requests"] == 1


def test_the_provider_itself_refuses_a_code_used_twice(sso: Any, client: Any) -> None:
    callback = to_provider(client, sso, "dana")
    code = callback.split("code=")[1].split("&")[0]
    data = {"grant_type": "authorization_code", "code": code,
            "redirect_uri": "http://testserver" + reverse("oidc_callback")}
    first = requests.post(sso.issuer + "/token", data=data, auth=("llamachat", CLIENT_SECRET),
                          timeout=5)
    second = requests.post(sso.issuer + "/token", data=data, auth=("llamachat", CLIENT_SECRET),
                           timeout=5)
    assert first.status_code == 400  # PKCE: no verifier, so not even the first one
    assert second.json()["error"] == "invalid_grant"


def test_a_cancelled_sign_in_at_the_provider_is_a_clear_page(client: Any, sso: Any) -> None:
    response = client.get(reverse("oidc_callback") + "?error=access_denied&state=x")
    assert response.status_code == 403
    assert b"did not sign you in" in response.content


def test_an_unreachable_provider_is_a_clear_page(client: Any, sso: Any, settings: Any) -> None:
    settings.OIDC_ISSUER = "http://127.0.0.1:9"  # nothing listens there
    response = client.get(reverse("oidc_login"))
    assert response.status_code == 503
    assert b"could not be reached" in response.content


def test_next_is_followed_only_to_this_site(client: Any, sso: Any) -> None:
    response = round_trip(client, sso, "dana", next_url="/settings/")
    assert response["Location"] == "/settings/"
    client.logout()
    response = round_trip(client, sso, "dana", next_url="https://evil.example/")
    assert response["Location"] == reverse("home")


def test_no_secret_code_or_token_reaches_the_logs(client: Any, sso: Any,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    callback = to_provider(client, sso, "dana")
    code = callback.split("code=")[1].split("&")[0]
    client.get(callback)
    sso.fault(bad_signature=True)
    client.logout()
    round_trip(client, sso, "dana")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "sso sign-in refused: bad_signature" in logged
    assert CLIENT_SECRET not in logged and code not in logged and "eyJ" not in logged
    assert not any(CLIENT_SECRET in str(e.details) for e in AuditEvent.objects.all())


def test_the_sign_on_pages_do_not_exist_while_it_is_off(client: Any, sso: Any,
                                                        settings: Any) -> None:
    settings.OIDC_ENABLED = False
    assert client.get(reverse("oidc_login")).status_code == 404
    assert client.get(reverse("oidc_callback") + "?code=a&state=b").status_code == 404
    assert b"sso-login" not in client.get(reverse("login")).content


# --- team sync ---------------------------------------------------------------------------------
def test_each_sign_in_syncs_the_mapped_teams_and_leaves_the_others_alone(
        client: Any, sso: Any, settings: Any) -> None:
    settings.OIDC_TEAMS_CLAIM = "groups"
    settings.OIDC_TEAM_MAP = {"eng": "Engineering", "ops": "Operations"}
    eng, ops = Group.objects.create(name="Engineering"), Group.objects.create(name="Operations")
    private = Group.objects.create(name="Book club")
    assert round_trip(client, sso, "dana").status_code == 302
    dana = User.objects.get(username="dana")
    dana.groups.add(private, ops)  # by hand: the club is not mapped; Operations is
    client.logout()
    sso.fault(claims={"groups": ["ops", "unknown-value"]})
    assert round_trip(client, sso, "dana").status_code == 302
    assert set(dana.groups.all()) == {ops, private}
    event = AuditEvent.objects.filter(action="sso.signed_in").latest("pk")
    assert event.details["teams_removed"] == ["Engineering"]
    assert AuditEvent.objects.filter(action="team.member_removed",
                                     details__team="Engineering").exists()
    assert eng.user_set.count() == 0


def test_without_a_map_claim_values_name_teams_and_a_missing_claim_changes_nothing(
        client: Any, sso: Any, settings: Any) -> None:
    settings.OIDC_TEAMS_CLAIM = "teams"
    research, sales = Group.objects.create(name="Research"), Group.objects.create(name="Sales")
    sso.fault(claims={"teams": "Research"})
    assert round_trip(client, sso, "dana").status_code == 302
    dana = User.objects.get(username="dana")
    assert list(dana.groups.all()) == [research]
    dana.groups.add(sales)  # invited to Sales: the provider does not know that team
    client.logout()
    assert round_trip(client, sso, "dana").status_code == 302
    assert set(dana.groups.all()) == {research, sales}  # without a map, sign-in only adds
    client.logout()
    sso.reset()  # the token no longer carries "teams" at all
    assert round_trip(client, sso, "dana").status_code == 302
    assert set(dana.groups.all()) == {research, sales}


# --- the login page and SSO-only mode ------------------------------------------------------------
def test_the_login_page_offers_the_button_with_its_label(client: Any, sso: Any,
                                                         settings: Any) -> None:
    settings.OIDC_BUTTON_LABEL = "Sign in with Corp ID"
    page = client.get(reverse("login") + "?next=/settings/").content.decode()
    assert 'id="sso-login"' in page and "Sign in with Corp ID" in page
    assert reverse("oidc_login") + "?next=/settings/" in page
    assert 'id="id_password"' in page and "<details" not in page


def test_sso_only_keeps_passwords_for_superusers_alone(client: Any, sso: Any, settings: Any,
                                                      member: Any, admin_user: Any) -> None:
    settings.OIDC_ONLY = True
    page = client.get(reverse("login")).content.decode()
    assert "<details" in page and "Administrator sign-in with a password" in page
    refused = client.post(reverse("login"), {"username": "bob", "password": PASSWORD})
    assert refused.status_code == 200 and _session_user(client) is None
    unknown = client.post(reverse("login"), {"username": "nobody", "password": PASSWORD})
    assert refused.context["form"].errors == unknown.context["form"].errors
    ok = client.post(reverse("login"), {"username": "root", "password": PASSWORD})
    assert ok.status_code == 302 and _session_user(client) == admin_user
    # a member still gets in, through the provider
    client.logout()
    sso.reset({"bob": person("bob", "bob@example.com")})
    assert round_trip(client, sso, "bob").status_code == 302
    assert _session_user(client) == member


def test_a_refusal_reads_in_chinese_for_a_chinese_reader(client: Any, sso: Any) -> None:
    sso.fault(wrong_issuer=True)
    client.cookies["django_language"] = "zh-hans"
    response = round_trip(client, sso, "dana")
    assert response.status_code == 403
    assert "单点登录".encode() in response.content
