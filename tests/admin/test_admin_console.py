"""The operations console: who may open which page, what the pages show, and the actions."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client

from conversations.models import ApiToken, AuditEvent, Budget, ShareLink, TeamSettings
from tests.admin.conftest import API_TOKEN, PROVIDER_KEY, change_form_payload

pytestmark = pytest.mark.django_db


def console_urls(data: dict[str, Any]) -> list[str]:
    """Every changelist and a change page of each model the console manages."""
    pages = {
        "providers/provider": data["provider"].pk,
        "providers/modelconfig": data["model"].pk,
        "auth/user": data["owner"].pk,
        "auth/group": data["team"].pk,
        "conversations/budget": data["budget"].pk,
        "conversations/usagerecord": data["usage"].pk,
        "conversations/apitoken": data["token"].pk,
        "conversations/sharelink": data["share"].pk,
        "conversations/auditevent": data["event"].pk,
        "conversations/conversation": data["conversation"].pk,
    }
    urls = []
    for model, pk in pages.items():
        urls += [f"/admin/{model}/", f"/admin/{model}/{pk}/change/"]
    return urls


def every_admin_url(data: dict[str, Any]) -> list[str]:
    return ["/admin/", "/admin/reports/usage/", *console_urls(data)]


def test_a_superuser_opens_every_page(admin_client: Client, console: dict[str, Any]) -> None:
    for url in every_admin_url(console):
        assert admin_client.get(url).status_code == 200, url


def test_the_index_links_the_reports_and_the_audit_log(admin_client: Client,
                                                       console: dict[str, Any]) -> None:
    body = admin_client.get("/admin/").content.decode()
    assert 'href="/admin/reports/usage/"' in body
    assert 'href="/admin/conversations/auditevent/"' in body


def test_users_who_are_not_staff_are_sent_to_the_admin_login(client: Client,
                                                             console: dict[str, Any]) -> None:
    client.force_login(console["member"])
    for url in every_admin_url(console):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url


def test_anonymous_visitors_are_sent_to_the_admin_login(client: Client,
                                                        console: dict[str, Any]) -> None:
    for url in every_admin_url(console):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url


def test_staff_without_permissions_are_refused(client: Client, console: dict[str, Any]) -> None:
    staff = console["member"]
    staff.is_staff = True
    staff.save()
    client.force_login(staff)
    for url in ["/admin/reports/usage/", *console_urls(console)]:
        assert client.get(url).status_code == 403, url
    body = client.get("/admin/").content.decode()
    assert "/admin/reports/usage/" not in body


def test_no_token_digest_provider_key_or_share_token_appears_in_any_page(
    admin_client: Client, console: dict[str, Any]
) -> None:
    token: ApiToken = console["token"]
    share: ShareLink = console["share"]
    ciphertext = console["provider"].credentials_encrypted
    for url in every_admin_url(console):
        body = admin_client.get(url).content.decode()
        for secret in (token.digest, API_TOKEN, PROVIDER_KEY, ciphertext[:24], share.token):
            assert secret not in body, url
    listing = admin_client.get("/admin/conversations/apitoken/").content.decode()
    assert f"{token.prefix}…" in listing
    assert "••••••••9876" in admin_client.get(
        f"/admin/providers/provider/{console['provider'].pk}/change/").content.decode()


def test_the_user_list_shows_status_roles_and_teams(admin_client: Client,
                                                    console: dict[str, Any]) -> None:
    body = admin_client.get("/admin/auth/user/").content.decode()
    for column in ("column-is_active", "column-is_staff", "column-is_superuser",
                   "column-team_names"):
        assert column in body
    assert "red" in body


def test_the_deactivate_action_turns_users_off_but_never_oneself(
    admin_client: Client, admin_user: Any, console: dict[str, Any]
) -> None:
    owner = console["owner"]
    response = admin_client.post("/admin/auth/user/", {
        "action": "deactivate_users", "_selected_action": [owner.pk, admin_user.pk]})
    assert response.status_code == 302
    owner.refresh_from_db()
    admin_user.refresh_from_db()
    assert owner.is_active is False
    assert admin_user.is_active is True
    admin_client.post("/admin/auth/user/", {"action": "activate_users",
                                            "_selected_action": [owner.pk]})
    owner.refresh_from_db()
    assert owner.is_active is True


def test_staff_who_may_edit_users_cannot_hand_out_roles(client: Client,
                                                        console: dict[str, Any]) -> None:
    staff, target = console["member"], console["owner"]
    staff.is_staff = True
    staff.save()
    staff.user_permissions.add(*Permission.objects.filter(
        codename__in=["view_user", "change_user"]))
    client.force_login(staff)
    url = f"/admin/auth/user/{staff.pk}/change/"
    payload = change_form_payload(client, url, is_superuser="on", first_name="Bob")
    assert client.post(url, payload).status_code == 302
    staff.refresh_from_db()
    assert staff.first_name == "Bob" and not staff.is_superuser
    target.is_superuser = True
    target.save()
    assert client.get(f"/admin/auth/user/{target.pk}/change/").status_code in {200, 403}
    response = client.post(f"/admin/auth/user/{target.pk}/change/", {"email": "x@evil.test"})
    assert response.status_code == 403
    assert client.post("/admin/auth/user/", {
        "action": "deactivate_users", "_selected_action": [target.pk]}).status_code == 302
    target.refresh_from_db()
    assert target.is_active is True


def test_the_team_page_shows_members_and_team_settings(admin_client: Client,
                                                       console: dict[str, Any]) -> None:
    listing = admin_client.get("/admin/auth/group/").content.decode()
    assert "column-member_count" in listing
    page = admin_client.get(f"/admin/auth/group/{console['team'].pk}/change/")
    body = page.content.decode()
    assert "alice" in body and 'name="chat_settings-0-members_can_continue"' in body
    assert TeamSettings.objects.get(team=console["team"]).members_can_continue is False


def test_a_new_team_saves_without_touching_its_settings(admin_client: Client, owner: Any) -> None:
    response = admin_client.post("/admin/auth/group/add/", {
        "name": "blue",
        "chat_settings-TOTAL_FORMS": "1", "chat_settings-INITIAL_FORMS": "0",
        "chat_settings-MIN_NUM_FORMS": "0", "chat_settings-MAX_NUM_FORMS": "1",
        "chat_settings-0-members_can_continue": "on"})
    assert response.status_code == 302
    assert Group.objects.filter(name="blue").exists()


def test_a_budget_needs_exactly_one_owner(admin_client: Client, console: dict[str, Any]) -> None:
    base = {"period": "day", "max_tokens": "500", "warn_percent": "80", "enabled": "on"}
    both = admin_client.post("/admin/conversations/budget/add/", {
        **base, "user": console["owner"].pk, "team": console["team"].pk})
    assert both.status_code == 200 and "exactly one" in both.content.decode()
    neither = admin_client.post("/admin/conversations/budget/add/", base)
    assert neither.status_code == 200
    created = admin_client.post("/admin/conversations/budget/add/",
                                {**base, "team": console["team"].pk})
    assert created.status_code == 302
    assert Budget.objects.filter(team=console["team"], max_tokens=500).exists()


def test_the_budget_list_shows_what_is_used(admin_client: Client,
                                            console: dict[str, Any]) -> None:
    body = admin_client.get("/admin/conversations/budget/").content.decode()
    assert "42 tokens" in body  # the usage record: 12 prompt + 30 completion, today


def test_revoking_tokens_in_the_admin(admin_client: Client, admin_user: Any,
                                      console: dict[str, Any]) -> None:
    token: ApiToken = console["token"]
    response = admin_client.post("/admin/conversations/apitoken/", {
        "action": "revoke", "_selected_action": [token.pk]})
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    event = AuditEvent.objects.get(action="token.revoked")
    assert event.actor == admin_user and event.target == f"token {token.pk}"


def test_revoking_share_links_in_the_admin(admin_client: Client, admin_user: Any,
                                           console: dict[str, Any]) -> None:
    share: ShareLink = console["share"]
    response = admin_client.post("/admin/conversations/sharelink/", {
        "action": "revoke", "_selected_action": [share.pk]})
    assert response.status_code == 302
    share.refresh_from_db()
    assert share.revoked_at is not None and not share.is_valid()
    events = AuditEvent.objects.filter(action="share.revoked", target=f"share {share.pk}")
    assert events.count() == 1 and events.get().actor == admin_user
    listing = admin_client.get("/admin/conversations/sharelink/?state=revoked")
    assert share.token[:6] in listing.content.decode()


def test_staff_who_may_only_view_links_cannot_revoke_them(client: Client,
                                                          console: dict[str, Any]) -> None:
    staff = console["member"]
    staff.is_staff = True
    staff.save()
    staff.user_permissions.add(Permission.objects.get(codename="view_sharelink"))
    client.force_login(staff)
    assert client.get("/admin/conversations/sharelink/").status_code == 200
    client.post("/admin/conversations/sharelink/", {
        "action": "revoke", "_selected_action": [console["share"].pk]})
    console["share"].refresh_from_db()
    assert console["share"].revoked_at is None


def test_ledgers_and_logs_are_read_only(admin_client: Client, console: dict[str, Any]) -> None:
    for model in ("usagerecord", "auditevent", "apitoken", "sharelink"):
        assert admin_client.get(f"/admin/conversations/{model}/add/").status_code == 403
    event = console["event"]
    response = admin_client.post(f"/admin/conversations/auditevent/{event.pk}/delete/",
                                 {"post": "yes"})
    assert response.status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_the_audit_log_filters_and_searches(admin_client: Client,
                                            console: dict[str, Any]) -> None:
    body = admin_client.get("/admin/conversations/auditevent/?action=share.created")
    assert body.status_code == 200 and "share.created" in body.content.decode()
    searched = admin_client.get("/admin/conversations/auditevent/?q=share")
    assert searched.status_code == 200 and f"share {console['share'].pk}" in \
        searched.content.decode()


def test_opening_someone_elses_conversation_in_the_admin_is_audited(
    admin_client: Client, admin_user: Any, console: dict[str, Any]
) -> None:
    conversation = console["conversation"]
    page = admin_client.get(f"/admin/conversations/conversation/{conversation.pk}/change/")
    assert "hello there" in page.content.decode()
    event = AuditEvent.objects.get(action="admin.opened_conversation")
    assert event.actor == admin_user and event.target == f"conversation {conversation.pk}"
    assert event.details == {"owner": "alice", "via": "admin"}
    assert event.ip == "127.0.0.1"


def test_revoke_and_deactivate_without_a_csrf_token_are_refused(
    admin_user: Any, console: dict[str, Any]
) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    posts = [("/admin/conversations/sharelink/", "revoke", console["share"].pk),
             ("/admin/conversations/apitoken/", "revoke", console["token"].pk),
             ("/admin/auth/user/", "deactivate_users", console["owner"].pk)]
    for url, action, pk in posts:
        response = client.post(url, {"action": action, "_selected_action": [pk]},
                               HTTP_ORIGIN="https://evil.test")
        assert response.status_code == 403, url
    console["share"].refresh_from_db()
    console["token"].refresh_from_db()
    console["owner"].refresh_from_db()
    assert console["share"].revoked_at is None and console["token"].revoked_at is None
    assert console["owner"].is_active


def test_console_pages_cannot_be_framed(admin_client: Client, console: dict[str, Any]) -> None:
    for url in ("/admin/reports/usage/", "/admin/conversations/sharelink/"):
        response = admin_client.get(url)
        assert response["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response["Content-Security-Policy"]


def test_a_users_single_sign_on_identities_are_shown_read_only(admin_client: Any,
                                                                owner: Any) -> None:
    from chatsite.models import ExternalIdentity

    ExternalIdentity.objects.create(user=owner, issuer="https://id.example.com",
                                    subject="sub-4711", email="alice@example.com")
    page = admin_client.get(f"/admin/auth/user/{owner.pk}/change/").content.decode()
    assert "https://id.example.com · sub-4711 · alice@example.com" in page
    assert 'name="sso_identities"' not in page
