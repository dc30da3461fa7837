"""The audit log records every security-relevant event, with who and from where, and no secret."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from conversations import audit
from conversations.models import AuditEvent, Conversation
from conversations.sharing import links
from providers.models import ModelConfig, Provider
from tests.admin.conftest import change_form_payload
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("pk"))


def everything_recorded() -> str:
    """Every audit row as text, for 'this secret appears nowhere' checks."""
    rows = AuditEvent.objects.values("action", "target", "details", "ip")
    return json.dumps(list(rows), default=str)


# --- sign-in ---------------------------------------------------------------------------------
def test_sign_in_failure_and_sign_out_are_recorded_without_the_password(
    client: Client, owner: Any
) -> None:
    client.post("/accounts/login/", {"username": "alice", "password": "wrong-horse-42"})
    client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    client.post("/accounts/logout/")
    (failed,) = events(audit.LOGIN_FAILED)
    assert failed.details == {"username": "alice"} and failed.actor is None
    assert failed.ip == "127.0.0.1"
    (succeeded,) = events(audit.LOGIN_SUCCEEDED)
    assert succeeded.actor == owner and succeeded.target == f"user {owner.pk}"
    (logout,) = events(audit.LOGOUT)
    assert logout.actor == owner
    recorded = everything_recorded()
    assert "wrong-horse-42" not in recorded and PASSWORD not in recorded


def test_a_failed_admin_sign_in_is_recorded_too(client: Client, admin_user: Any) -> None:
    client.post("/admin/login/", {"username": "root", "password": "not-it-at-all"})
    (failed,) = events(audit.LOGIN_FAILED)
    assert failed.details == {"username": "root"}
    assert "not-it-at-all" not in everything_recorded()


# --- roles and membership ---------------------------------------------------------------------
def test_role_changes_made_in_the_admin_name_the_admin(admin_client: Client, admin_user: Any,
                                                       owner: Any) -> None:
    url = f"/admin/auth/user/{owner.pk}/change/"
    response = admin_client.post(url, change_form_payload(admin_client, url, is_staff="on"))
    assert response.status_code == 302
    (event,) = events(audit.USER_ROLE_CHANGED)
    assert event.actor == admin_user and event.target == f"user {owner.pk}"
    assert event.details == {"username": "alice", "changes": {"is_staff": [False, True]}}
    assert event.ip == "127.0.0.1"


def test_deactivation_and_promotion_outside_the_admin_are_recorded(owner: Any) -> None:
    owner.is_active = False
    owner.save()
    owner.is_superuser = True
    owner.save(update_fields=["is_superuser"])
    owner.first_name = "Alice"
    owner.save()  # not a role: no event
    changes = [e.details["changes"] for e in events(audit.USER_ROLE_CHANGED)]
    assert changes == [{"is_active": [True, False]}, {"is_superuser": [False, True]}]


def test_new_accounts_are_recorded_with_their_roles(admin_user: Any, owner: Any) -> None:
    created = {e.details["username"]: e.details for e in events(audit.USER_CREATED)}
    assert created["root"]["is_superuser"] is True and created["root"]["is_staff"] is True
    assert created["alice"]["is_superuser"] is False


def test_membership_changes_are_recorded_from_both_sides(owner: Any, member: Any) -> None:
    red = Group.objects.create(name="red")
    owner.groups.add(red)
    red.user_set.add(member)
    red.user_set.remove(owner)
    member.groups.clear()
    added = [(e.details["username"], e.details["team"]) for e in events(audit.TEAM_MEMBER_ADDED)]
    removed = [(e.details["username"], e.details["team"])
               for e in events(audit.TEAM_MEMBER_REMOVED)]
    assert added == [("alice", "red"), ("bob", "red")]
    assert removed == [("alice", "red"), ("bob", "red")]
    owner.groups.add(red)
    red.user_set.clear()
    assert [e.details["username"] for e in events(audit.TEAM_MEMBER_REMOVED)][-1] == "alice"


def test_membership_set_in_the_admin_names_the_admin(admin_client: Client, admin_user: Any,
                                                     owner: Any) -> None:
    red = Group.objects.create(name="red")
    url = f"/admin/auth/user/{owner.pk}/change/"
    admin_client.post(url, change_form_payload(admin_client, url, groups=[str(red.pk)]))
    (event,) = events(audit.TEAM_MEMBER_ADDED)
    assert event.actor == admin_user and event.details["team"] == "red"


# --- providers and models ----------------------------------------------------------------------
def provider_payload(provider: Provider, **overrides: str) -> dict[str, str]:
    data = {"name": provider.name, "base_url": provider.base_url, "enabled": "on",
            "image_transport": "url"}
    data.update({f"cred_{f.name}": "" for f in provider.credential_fields})
    data.update(overrides)
    return data


def test_a_key_set_in_the_admin_is_recorded_as_changed_and_never_stored(
    admin_client: Client, admin_user: Any
) -> None:
    provider = Provider.objects.get(kind="dashscope")
    url = f"/admin/providers/provider/{provider.pk}/change/"
    key = "sk-audit-never-store-me-4242"
    response = admin_client.post(url, provider_payload(provider, cred_api_key=key))
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.get_credentials() == {"api_key": key}
    (event,) = events(audit.PROVIDER_CREDENTIALS_CHANGED)
    assert event.details == {"kind": "dashscope", "cleared": False}
    assert event.actor == admin_user and event.target == f"provider {provider.pk}"
    assert events(audit.PROVIDER_CHANGED) == []  # only the key changed
    recorded = everything_recorded()
    ciphertext = provider.credentials_encrypted
    assert key not in recorded and key[-4:] not in recorded
    assert ciphertext not in recorded and ciphertext[:20] not in recorded


def test_other_provider_changes_name_the_fields_only(admin_client: Client,
                                                     admin_user: Any) -> None:
    provider = Provider.objects.get(kind="dashscope")
    url = f"/admin/providers/provider/{provider.pk}/change/"
    admin_client.post(url, provider_payload(provider, enabled="", name="DashScope (paused)"))
    (event,) = events(audit.PROVIDER_CHANGED)
    assert event.details == {"kind": "dashscope", "fields": ["enabled", "name"]}
    assert event.actor == admin_user
    assert events(audit.PROVIDER_CREDENTIALS_CHANGED) == []


def test_a_connection_test_result_is_not_a_configuration_change(owner: Any) -> None:
    provider = Provider.objects.get(kind="qianfan")
    provider.last_status = "error"
    provider.last_error = "401 from the vendor"
    provider.last_checked_at = timezone.now()
    provider.save()
    assert AuditEvent.objects.filter(action__startswith="provider.").count() == 0


def test_model_changes_in_the_admin_are_recorded_with_field_names(
    admin_client: Client, admin_user: Any
) -> None:
    model = ModelConfig.objects.order_by("pk").first()
    assert model is not None
    url = f"/admin/providers/modelconfig/{model.pk}/change/"
    payload = change_form_payload(admin_client, url, price_input_per_mtok="1.25", enabled=None)
    assert admin_client.post(url, payload).status_code == 302
    (event,) = events(audit.MODEL_CHANGED)
    assert event.details == {"slug": model.slug, "fields": ["enabled", "price_input_per_mtok"]}
    assert event.actor == admin_user and event.target == f"model {model.pk}"


def test_who_may_pick_a_model_is_recorded(owner: Any) -> None:
    model = ModelConfig.objects.order_by("pk").first()
    assert model is not None
    red = Group.objects.create(name="red")
    model.groups.add(red)
    red.models.remove(model)
    details = [e.details for e in events(audit.MODEL_CHANGED)]
    assert details == [{"slug": model.slug, "fields": ["groups"], "groups_added": ["red"]},
                       {"slug": model.slug, "fields": ["groups"], "groups_removed": ["red"]}]


def test_an_earlier_change_by_a_script_is_not_pinned_on_a_later_admin(
    admin_client: Client, admin_user: Any
) -> None:
    model = ModelConfig.objects.order_by("pk").first()
    assert model is not None
    model.price_output_per_mtok = Decimal("2")
    model.save()  # a script, no request: nobody to name
    url = f"/admin/providers/modelconfig/{model.pk}/change/"
    admin_client.post(url, change_form_payload(admin_client, url, currency="CNY"))
    first, second = events(audit.MODEL_CHANGED)
    assert first.actor is None and second.actor == admin_user


# --- share links and oversight -------------------------------------------------------------------
def conversation_of(user: Any) -> Conversation:
    model = ModelConfig.objects.order_by("pk").first()
    return Conversation.objects.create(owner=user, model=model, title="Plans")


def test_share_creation_and_revocation_are_recorded_without_the_token(owner: Any) -> None:
    share = links.create_share(owner, conversation_of(owner), live=True)
    share.revoked_at = timezone.now()
    share.save()
    (created,) = events(audit.SHARE_CREATED)
    assert created.actor == owner and created.target == f"share {share.pk}"
    assert created.details["live"] is True
    (revoked,) = events(audit.SHARE_REVOKED)
    assert revoked.target == f"share {share.pk}"
    assert share.token not in everything_recorded()


def test_a_superuser_opening_a_conversation_in_the_chat_is_recorded(
    admin_client: Client, admin_user: Any, owner: Any
) -> None:
    conversation = conversation_of(owner)
    assert admin_client.get(f"/c/{conversation.pk}/").status_code == 200
    (event,) = events(audit.ADMIN_OPENED_CONVERSATION)
    assert event.actor == admin_user and event.target == f"conversation {conversation.pk}"


def test_opening_ones_own_conversation_in_the_admin_is_not_recorded(
    admin_client: Client, admin_user: Any
) -> None:
    conversation = conversation_of(admin_user)
    url = f"/admin/conversations/conversation/{conversation.pk}/change/"
    assert admin_client.get(url).status_code == 200
    assert events(audit.ADMIN_OPENED_CONVERSATION) == []


# --- the helper itself ---------------------------------------------------------------------------
def test_record_drops_every_detail_named_like_a_secret(owner: Any) -> None:
    event = audit.record("test.event", actor=owner, details={
        "api_key": "k", "Token": "t", "client_secret": "s", "password": "p",
        "credentials": {"a": 1}, "digest": "d", "kind": "dashscope",
        "nested": {"secret_key": "x", "fine": [{"access_token": "y", "n": 1}]}})
    assert event.details == {"kind": "dashscope", "nested": {"fine": [{"n": 1}]}}
