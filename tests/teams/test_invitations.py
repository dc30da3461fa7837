"""Invitation links: made by managers and admins, shown once, stored hashed, used once (one
conditional UPDATE), bound to an e-mail when asked, revocable, audited; they work with
ALLOW_SIGNUP=0, and a used, revoked or expired link gets a clear page."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.utils import timezone

from conversations.access import TeamRole, team_role
from conversations.models import AuditEvent, Invitation
from conversations.teams import invitations
from tests.support import signed_in

pytestmark = pytest.mark.django_db
NEW_PASSWORD = "a-long-and-unusual-passphrase-42"


def _make_link(client: Client, team: Group, **data: str) -> str:
    """Create an invitation through the team page; the link it shows once."""
    response = client.post(f"/teams/{team.pk}/invitations/",
                           {"role": "member", "days": "7", **data})
    assert response.status_code == 302
    page = client.get(f"/teams/{team.pk}/").content.decode()
    found = re.search(r"data-invite-url>([^<]+)<", page)
    assert found, "the new link is shown"
    return found.group(1)


def _path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def test_a_link_is_shown_once_and_stored_only_as_its_hash(team: Group, owner: Any,
                                                          settings: Any) -> None:
    settings.SITE_URL = "https://chat.example.com"
    client = signed_in(owner)
    url = _make_link(client, team, email="dora@example.com", role="manager", days="3")
    assert url.startswith("https://chat.example.com/invite/")
    token = url.rstrip("/").rsplit("/", 1)[1]
    invitation = Invitation.objects.get()
    assert invitation.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in str(Invitation.objects.values().get())
    assert invitation.email == "dora@example.com" and invitation.role == "manager"
    assert timedelta(days=2, hours=23) < invitation.expires_at - timezone.now() <= timedelta(
        days=3)
    again = client.get(f"/teams/{team.pk}/").content.decode()
    assert token not in again and "data-invite-url" not in again
    assert "dora@example.com" in again  # in the pending list
    event = AuditEvent.objects.get(action="invitation.created")
    assert event.actor == owner and token not in str(event.details)
    assert event.details["bound_to_email"] is True


def test_bad_invitation_input_is_refused_with_nothing_made(team: Group, owner: Any) -> None:
    client = signed_in(owner)
    for data in [{"role": "admin", "days": "7"}, {"role": "member", "days": "0"},
                 {"role": "member", "days": "1000"},
                 {"role": "member", "days": "7", "email": "not-an-address"}]:
        response = client.post(f"/teams/{team.pk}/invitations/", data, follow=True)
        assert response.status_code == 200
        assert "No invitation was made" in " ".join(str(m) for m in response.context["messages"])
    assert not Invitation.objects.exists()


def test_a_new_person_sets_a_password_and_joins_with_signup_closed(
        team: Group, owner: Any, settings: Any) -> None:
    settings.ALLOW_SIGNUP = False
    path = _path(_make_link(signed_in(owner), team))
    visitor = Client()
    page = visitor.get(path)
    assert page.status_code == 200 and "Join research" in page.content.decode()
    assert "Invited by alice." in page.content.decode()
    assert page["Cache-Control"] == "no-store"
    response = visitor.post(path, {"username": "dora", "email": "dora@example.com",
                                   "password1": NEW_PASSWORD, "password2": NEW_PASSWORD})
    assert response.status_code == 302 and response["Location"] == f"/teams/{team.pk}/"
    dora = get_user_model().objects.get(username="dora")
    assert dora.email == "dora@example.com" and not dora.is_staff and not dora.is_superuser
    assert team_role(dora, team) == TeamRole.MEMBER
    assert visitor.get(f"/teams/{team.pk}/").status_code == 200  # signed in
    invitation = Invitation.objects.get()
    assert invitation.used_by == dora and invitation.used_at is not None
    used = AuditEvent.objects.get(action="invitation.used")
    assert used.actor == dora and used.details["username"] == "dora"
    assert AuditEvent.objects.filter(action="team.member_added", actor=dora).exists()
    second = Client().get(path)
    assert second.status_code == 410 and "already used" in second.content.decode()


def test_role_fields_posted_with_the_form_are_ignored(team: Group, owner: Any) -> None:
    path = _path(_make_link(signed_in(owner), team))
    Client().post(path, {"username": "eve", "password1": NEW_PASSWORD,
                         "password2": NEW_PASSWORD, "is_superuser": "1", "is_staff": "1",
                         "groups": "1"})
    eve = get_user_model().objects.get(username="eve")
    assert not eve.is_superuser and not eve.is_staff


def test_a_bound_link_fixes_the_e_mail_and_refuses_other_accounts(
        team: Group, owner: Any, outsider: Any) -> None:
    path = _path(_make_link(signed_in(owner), team, email="dora@example.com"))
    html = Client().get(path).content.decode()
    assert 'value="dora@example.com"' in html and "disabled" in html
    refused = signed_in(outsider).post(path)
    assert refused.status_code == 403 and "another e-mail address" in refused.content.decode()
    assert team_role(outsider, team) == TeamRole.NONE
    Client().post(path, {"username": "dora", "email": "evil@example.com",
                         "password1": NEW_PASSWORD, "password2": NEW_PASSWORD})
    assert get_user_model().objects.get(username="dora").email == "dora@example.com"


def test_a_signed_in_person_joins_with_one_button_and_a_manager_link_makes_a_manager(
        team: Group, owner: Any, outsider: Any) -> None:
    path = _path(_make_link(signed_in(owner), team, email="CHARLIE@example.com",
                            role="manager"))
    client = signed_in(outsider)
    assert "data-join" in client.get(path).content.decode()
    assert team_role(outsider, team) == TeamRole.NONE  # opening does not join
    response = client.post(path)
    assert response.status_code == 302
    assert team_role(outsider, team) == TeamRole.MANAGER


def test_a_member_who_opens_a_member_link_is_told_and_the_link_stays_unused(
        team: Group, owner: Any, member: Any) -> None:
    path = _path(_make_link(signed_in(owner), team))
    client = signed_in(member)
    assert "already in this team" in client.get(path).content.decode()
    client.post(path)
    assert Invitation.objects.get().used_at is None


def test_revoked_expired_and_unknown_links_get_a_clear_page(team: Group, owner: Any) -> None:
    client = signed_in(owner)
    revoked = _path(_make_link(client, team))
    invitation = Invitation.objects.get()
    response = client.post(f"/teams/{team.pk}/invitations/{invitation.pk}/revoke/",
                           follow=True)
    assert "revoked" in " ".join(str(m) for m in response.context["messages"])
    assert AuditEvent.objects.filter(action="invitation.revoked", actor=owner).exists()
    page = Client().get(revoked)
    assert page.status_code == 410 and "withdrawn" in page.content.decode()
    assert Client().post(revoked, {"username": "x", "password1": NEW_PASSWORD,
                                   "password2": NEW_PASSWORD}).status_code == 410
    assert not get_user_model().objects.filter(username="x").exists()

    expired = _path(_make_link(client, team))
    Invitation.objects.filter(revoked_at__isnull=True).update(
        expires_at=timezone.now() - timedelta(seconds=1))
    page = Client().get(expired)
    assert page.status_code == 410 and "expired" in page.content.decode()

    unknown = Client().get("/invite/not-a-real-token/")
    assert unknown.status_code == 404 and "does not work" in unknown.content.decode()
    assert Client().get("/invite/" + "x" * 500 + "/").status_code == 404


def test_a_manager_of_another_team_cannot_revoke_or_see_this_teams_links(
        team: Group, owner: Any, outsider: Any) -> None:
    _make_link(signed_in(owner), team)
    invitation = Invitation.objects.get()
    assert signed_in(outsider).post(
        f"/teams/{team.pk}/invitations/{invitation.pk}/revoke/").status_code == 404
    other = Group.objects.create(name="sales")
    other.user_set.add(outsider)
    other_page = signed_in(outsider).post(f"/teams/{other.pk}/invitations/{invitation.pk}/revoke/")
    assert other_page.status_code == 403  # a member there, not a manager
    assert Invitation.objects.get().revoked_at is None


def test_a_taken_username_or_weak_password_is_refused_and_the_link_stays_valid(
        team: Group, owner: Any, member: Any) -> None:
    path = _path(_make_link(signed_in(owner), team))
    taken = Client().post(path, {"username": "BOB", "password1": NEW_PASSWORD,
                                 "password2": NEW_PASSWORD})
    assert taken.status_code == 400 and "taken" in taken.content.decode()
    weak = Client().post(path, {"username": "dora", "password1": "123", "password2": "123"})
    assert weak.status_code == 400
    differ = Client().post(path, {"username": "dora", "password1": NEW_PASSWORD,
                                  "password2": NEW_PASSWORD + "x"})
    assert differ.status_code == 400 and "differ" in differ.content.decode()
    assert Invitation.objects.get().used_at is None
    assert not get_user_model().objects.filter(username="dora").exists()


def test_only_one_of_two_uses_at_the_same_moment_wins(team: Group, owner: Any,
                                                      outsider: Any, admin_user: Any) -> None:
    created = invitations.create(team=team, email="", role="member", days=7, actor=owner)
    first = invitations.find(created.token)
    second = invitations.find(created.token)
    assert first is not None and second is not None
    invitations.accept(first, outsider)
    with pytest.raises(invitations.InvitationGone) as gone:
        invitations.accept(second, admin_user)  # a second tab, holding a stale copy
    assert gone.value.reason == "used"
    assert team_role(outsider, team) == TeamRole.MEMBER
    assert not admin_user.groups.filter(pk=team.pk).exists()
    with pytest.raises(invitations.InvitationGone):
        invitations.accept_as_new(second, username="late", email="", password=NEW_PASSWORD)
    assert not get_user_model().objects.filter(username="late").exists()


@pytest.mark.django_db(transaction=True)
def test_two_tabs_posting_at_once_create_one_account(team: Group, owner: Any) -> None:
    created = invitations.create(team=team, email="", role="member", days=7, actor=owner)
    path = f"/invite/{created.token}/"
    statuses: list[int] = []
    barrier = threading.Barrier(2)

    def use(name: str) -> None:
        barrier.wait()
        try:
            statuses.append(Client().post(path, {"username": name, "password1": NEW_PASSWORD,
                                                 "password2": NEW_PASSWORD}).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=use, args=(name,)) for name in ("tab1", "tab2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [302, 410]
    assert get_user_model().objects.filter(username__in=["tab1", "tab2"]).count() == 1
    assert team.user_set.filter(username__in=["tab1", "tab2"]).count() == 1


def test_the_sso_button_appears_when_single_sign_on_is_configured(
        team: Group, owner: Any, settings: Any) -> None:
    path = _path(_make_link(signed_in(owner), team))
    assert "data-invite-sso" not in Client().get(path).content.decode()
    settings.OIDC_ENABLED = True
    html = Client().get(path).content.decode()
    assert "data-invite-sso" in html and "next=/invite/" in html.replace("%2F", "/")


def test_with_single_sign_on_only_no_password_account_is_made(team: Group, owner: Any,
                                                              settings: Any) -> None:
    path = _path(_make_link(signed_in(owner), team))
    settings.OIDC_ENABLED = True
    settings.OIDC_ONLY = True
    html = Client().get(path).content.decode()
    assert "data-invite-sso" in html and "data-invite-signup" not in html
    Client().post(path, {"username": "dora", "password1": NEW_PASSWORD,
                         "password2": NEW_PASSWORD})
    assert not get_user_model().objects.filter(username="dora").exists()
    assert Invitation.objects.get().used_at is None


def test_the_invite_page_keeps_its_address_to_this_site(team: Group, owner: Any) -> None:
    path = _path(_make_link(signed_in(owner), team))
    response = Client().get(path)
    # Links out of the page never carry the token in a Referer header.
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cache-Control"] == "no-store"


def test_the_invite_page_reads_in_chinese(team: Group, owner: Any) -> None:
    path = _path(_make_link(signed_in(owner), team))
    html = Client().get(path, HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "加入 research" in html and "创建账户并加入" in html
    gone = Client().get("/invite/nothing-here/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert "此邀请链接无效" in gone.content.decode()


def test_a_team_cannot_pile_up_pending_invitations(team: Group, owner: Any) -> None:
    later = timezone.now() + timedelta(days=7)
    Invitation.objects.bulk_create(
        Invitation(token_hash=f"{n:064x}", team=team, created_by=owner, expires_at=later)
        for n in range(invitations.MAX_PENDING))
    response = signed_in(owner).post(f"/teams/{team.pk}/invitations/",
                                     {"role": "member", "days": "7"}, follow=True)
    assert "the most allowed" in " ".join(str(m) for m in response.context["messages"])
    assert Invitation.objects.count() == invitations.MAX_PENDING


def test_a_superuser_invites_someone_to_the_site_without_a_team(admin_user: Any, owner: Any,
                                                                settings: Any) -> None:
    settings.ALLOW_SIGNUP = False
    client = signed_in(admin_user)
    assert client.post("/teams/invitations/", {"email": "", "days": "2"}).status_code == 302
    page = client.get("/teams/").content.decode()
    found = re.search(r"data-invite-url>([^<]+)<", page)
    assert found and "Into no team" in page
    path = _path(found.group(1))
    assert "data-invite-url" not in client.get("/teams/").content.decode()  # shown once
    response = Client().post(path, {"username": "hana", "password1": NEW_PASSWORD,
                                    "password2": NEW_PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"
    hana = get_user_model().objects.get(username="hana")
    assert not hana.groups.exists() and not hana.is_staff
    assert AuditEvent.objects.filter(action="invitation.used", actor=hana).exists()
    assert signed_in(owner).post("/teams/invitations/", {"days": "2"}).status_code == 403
    assert Invitation.objects.count() == 1


def test_a_superuser_revokes_a_site_invitation(admin_user: Any, owner: Any) -> None:
    created = invitations.create(team=None, email="x@example.com", role="manager", days=7,
                                 actor=admin_user)
    assert created.invitation.role == "member"  # no team: no role to give
    assert signed_in(owner).post(
        f"/teams/invitations/{created.invitation.pk}/revoke/").status_code == 403
    signed_in(admin_user).post(f"/teams/invitations/{created.invitation.pk}/revoke/")
    assert Client().get(f"/invite/{created.token}/").status_code == 410


def test_using_a_link_needs_the_csrf_token(team: Group, owner: Any, outsider: Any) -> None:
    path = _path(_make_link(signed_in(owner), team))
    anonymous = Client(enforce_csrf_checks=True)
    assert anonymous.post(path, {"username": "dora", "password1": NEW_PASSWORD,
                                 "password2": NEW_PASSWORD}).status_code == 403
    member = Client(enforce_csrf_checks=True)
    member.force_login(outsider)
    assert member.post(path).status_code == 403
    assert Invitation.objects.get().used_at is None
    assert team_role(outsider, team) == TeamRole.NONE


def test_an_address_that_has_an_account_is_told_to_sign_in(team: Group, owner: Any,
                                                           outsider: Any) -> None:
    path = _path(_make_link(signed_in(owner), team, email="charlie@example.com"))
    response = Client().post(path, {"username": "charlie2", "password1": NEW_PASSWORD,
                                     "password2": NEW_PASSWORD})
    assert response.status_code == 400 and "sign in with it" in response.content.decode()
    assert not get_user_model().objects.filter(username="charlie2").exists()
    typed = _path(_make_link(signed_in(owner), team))
    response = Client().post(typed, {"username": "charlie3", "email": "Charlie@Example.com",
                                     "password1": NEW_PASSWORD, "password2": NEW_PASSWORD})
    assert response.status_code == 400
    assert Invitation.objects.filter(used_at__isnull=False).count() == 0


def test_a_valid_link_never_reaches_the_logs(team: Group, owner: Any, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    url = _make_link(signed_in(owner), team)
    token = url.rstrip("/").rsplit("/", 1)[1]
    visitor = Client()
    visitor.get(_path(url))
    visitor.post(_path(url), {"username": "dora", "password1": NEW_PASSWORD,
                              "password2": NEW_PASSWORD})
    assert get_user_model().objects.filter(username="dora").exists()
    assert not [r for r in caplog.records if token in r.getMessage()]
    assert token not in str(list(AuditEvent.objects.values("details", "target")))
