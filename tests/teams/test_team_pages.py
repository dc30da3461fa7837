"""The team pages: who sees what, members added several at once, removed, promoted; the
team's settings; bad input refused with nothing changed; every POST needs CSRF."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from conversations.access import TeamRole, team_role
from conversations.chat import services as chat_services
from conversations.models import AuditEvent, Budget, Conversation, TeamSettings, UsageRecord
from providers.models import ModelConfig
from tests.conftest import PASSWORD
from tests.support import model, signed_in

pytestmark = pytest.mark.django_db


def _flash(response: Any) -> str:
    return " ".join(str(m) for m in response.context["messages"]) if response.context else ""


# --- who sees what ----------------------------------------------------------------------------
def test_roles_follow_membership_managers_and_superusers(team: Group, owner: Any, member: Any,
                                                         outsider: Any, admin_user: Any) -> None:
    assert team_role(owner, team) == TeamRole.MANAGER
    assert team_role(member, team) == TeamRole.MEMBER
    assert team_role(outsider, team) == TeamRole.NONE
    assert team_role(admin_user, team) == TeamRole.ADMIN
    member.is_active = False
    member.save()
    assert team_role(member, team) == TeamRole.NONE


def test_a_manager_row_without_membership_gives_nothing(team: Group, outsider: Any) -> None:
    TeamSettings.objects.get(team=team).managers.add(outsider)
    assert team_role(outsider, team) == TeamRole.NONE


def test_an_outsider_gets_not_found_and_a_member_reads_without_forms(
        team: Group, member: Any, outsider: Any) -> None:
    assert signed_in(outsider).get(f"/teams/{team.pk}/").status_code == 404
    assert signed_in(outsider).get("/teams/999999/").status_code == 404
    page = signed_in(member).get(f"/teams/{team.pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "alice" in html and "bob" in html
    assert "data-add-members" not in html and "data-invite-form" not in html
    assert "/remove/" not in html


def test_a_member_may_not_change_the_team(team: Group, member: Any, owner: Any) -> None:
    client = signed_in(member)
    for url, data in [(f"/teams/{team.pk}/members/", {"people": "charlie"}),
                      (f"/teams/{team.pk}/members/{owner.pk}/remove/", {}),
                      (f"/teams/{team.pk}/members/{member.pk}/role/", {"manager": "1"}),
                      (f"/teams/{team.pk}/settings/", {"members_can_continue": ""}),
                      (f"/teams/{team.pk}/invitations/", {"role": "member", "days": "7"})]:
        assert client.post(url, data).status_code == 403, url
    assert set(team.user_set.values_list("username", flat=True)) == {"alice", "bob"}
    assert team_role(member, team) == TeamRole.MEMBER
    assert TeamSettings.objects.get(team=team).members_can_continue


def test_the_list_shows_a_users_teams_and_all_of_them_to_a_superuser(
        team: Group, member: Any, outsider: Any, admin_user: Any) -> None:
    Group.objects.create(name="sales")
    mine = signed_in(member).get("/teams/").content.decode()
    assert "research" in mine and "sales" not in mine and "data-team-create" not in mine
    assert "members: 2" in mine
    everything = signed_in(admin_user).get("/teams/").content.decode()
    assert "research" in everything and "sales" in everything and "data-team-create" in everything
    assert "not in any team" in signed_in(outsider).get("/teams/").content.decode()


def test_the_user_menu_shows_teams_to_members_and_superusers_only(
        team: Group, member: Any, outsider: Any, admin_user: Any) -> None:
    assert 'href="/teams/"' in signed_in(member).get("/account/tokens/").content.decode()
    assert 'href="/teams/"' in signed_in(admin_user).get("/account/tokens/").content.decode()
    assert 'href="/teams/"' not in signed_in(outsider).get("/account/tokens/").content.decode()


def test_a_superuser_creates_a_team_and_others_cannot(admin_user: Any, owner: Any) -> None:
    response = signed_in(admin_user).post("/teams/", {"name": "  Design   team "})
    team = Group.objects.get(name="Design team")
    assert response.status_code == 302 and response["Location"] == f"/teams/{team.pk}/"
    assert TeamSettings.objects.filter(team=team).exists()
    assert AuditEvent.objects.filter(action="team.created", actor=admin_user).exists()
    again = signed_in(admin_user).post("/teams/", {"name": "design TEAM"})
    assert again.status_code == 400 and "already exists" in again.content.decode()
    assert signed_in(owner).post("/teams/", {"name": "Mine"}).status_code == 403
    assert not Group.objects.filter(name="Mine").exists()


def test_every_post_needs_the_csrf_token(team: Group, owner: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    response = client.post(f"/teams/{team.pk}/members/", {"people": "charlie"})
    assert response.status_code == 403
    assert client.post(f"/teams/{team.pk}/invitations/",
                       {"role": "member", "days": "7"}).status_code == 403
    assert set(team.user_set.values_list("username", flat=True)) == {"alice", "bob"}


# --- members ----------------------------------------------------------------------------------
def test_a_manager_adds_three_people_at_once(team: Group, owner: Any, member: Any,
                                             django_user_model: Any) -> None:
    django_user_model.objects.create_user("dora", "dora@example.com", PASSWORD)
    django_user_model.objects.create_user("emil", "Emil@Example.com", PASSWORD)
    django_user_model.objects.create_user("fay", "", PASSWORD)
    response = signed_in(owner).post(f"/teams/{team.pk}/members/", {
        "people": "dora\nemil@example.com, fay; bob nobody@example.com ghost dora"},
        follow=True)
    assert set(team.user_set.values_list("username", flat=True)) == {
        "alice", "bob", "dora", "emil", "fay"}
    text = _flash(response)
    assert "Added: dora, emil, fay." in text
    assert "Already members: bob." in text
    assert "No account found for: nobody@example.com, ghost." in text
    added = AuditEvent.objects.filter(action="team.member_added", actor=owner)
    assert added.count() == 3


def test_inactive_accounts_and_shared_e_mails_are_not_matched(
        team: Group, owner: Any, django_user_model: Any) -> None:
    django_user_model.objects.create_user("gone", "gone@example.com", PASSWORD, is_active=False)
    django_user_model.objects.create_user("twin1", "twin@example.com", PASSWORD)
    django_user_model.objects.create_user("twin2", "twin@example.com", PASSWORD)
    response = signed_in(owner).post(f"/teams/{team.pk}/members/",
                                     {"people": "gone twin@example.com"}, follow=True)
    assert "No account found for: gone, twin@example.com." in _flash(response)
    assert team.user_set.count() == 2


def test_empty_or_oversized_lists_are_refused_with_nothing_changed(team: Group,
                                                                   owner: Any) -> None:
    client = signed_in(owner)
    empty = client.post(f"/teams/{team.pk}/members/", {"people": " ,, \n"}, follow=True)
    assert "Enter at least one" in _flash(empty)
    many = " ".join(f"user{i}" for i in range(150))
    too_many = client.post(f"/teams/{team.pk}/members/", {"people": many}, follow=True)
    assert "At most 100 people" in _flash(too_many)
    assert team.user_set.count() == 2


def test_removing_a_member_drops_their_manager_role(team: Group, owner: Any, member: Any,
                                                    admin_user: Any) -> None:
    client = signed_in(admin_user)
    client.post(f"/teams/{team.pk}/members/{member.pk}/role/", {"manager": "1"})
    assert team_role(member, team) == TeamRole.MANAGER
    response = client.post(f"/teams/{team.pk}/members/{member.pk}/remove/", follow=True)
    assert "bob is no longer a member of research" in _flash(response)
    assert not member.groups.filter(pk=team.pk).exists()
    assert not TeamSettings.objects.get(team=team).managers.filter(pk=member.pk).exists()
    assert AuditEvent.objects.filter(action="team.member_removed", actor=admin_user).exists()
    assert AuditEvent.objects.filter(action="team.manager_removed", actor=admin_user).exists()


def test_leaving_a_team_any_other_way_also_drops_the_manager_role(team: Group,
                                                                  owner: Any) -> None:
    owner.groups.remove(team)  # e.g. the admin's user page, or single sign-on's team sync
    assert not TeamSettings.objects.get(team=team).managers.filter(pk=owner.pk).exists()
    owner.groups.add(team)
    assert team_role(owner, team) == TeamRole.MEMBER


def test_a_manager_makes_and_unmakes_managers_of_members_only(
        team: Group, owner: Any, member: Any, outsider: Any) -> None:
    client = signed_in(owner)
    client.post(f"/teams/{team.pk}/members/{member.pk}/role/", {"manager": "1"})
    assert team_role(member, team) == TeamRole.MANAGER
    assert AuditEvent.objects.filter(action="team.manager_added", actor=owner).exists()
    client.post(f"/teams/{team.pk}/members/{member.pk}/role/", {"manager": "0"})
    assert team_role(member, team) == TeamRole.MEMBER
    refused = client.post(f"/teams/{team.pk}/members/{outsider.pk}/role/", {"manager": "1"},
                          follow=True)
    assert "not a member" in _flash(refused)
    assert team_role(outsider, team) == TeamRole.NONE
    gone = client.post(f"/teams/{team.pk}/members/{outsider.pk}/remove/", follow=True)
    assert "not a member" in _flash(gone) and gone.status_code == 200


def test_the_page_shows_each_members_role(team: Group, member: Any) -> None:
    html = signed_in(member).get(f"/teams/{team.pk}/").content.decode()
    alice = re.search(r'data-member="alice".*?</tr>', html, re.S)
    bob = re.search(r'data-member="bob".*?</tr>', html, re.S)
    assert alice and 'data-role="manager"' in alice.group(0)
    assert bob and 'data-role="member"' in bob.group(0)


# --- conversations, usage, settings -----------------------------------------------------------
def test_the_page_links_the_teams_shared_conversations(team: Group, owner: Any, member: Any,
                                                       outsider: Any) -> None:
    shared = chat_services.conversation_create(owner, model=model())
    Conversation.objects.filter(pk=shared.pk).update(team=team, title="Quarterly plan")
    private = chat_services.conversation_create(owner, model=model())
    Conversation.objects.filter(pk=private.pk).update(title="My diary")
    html = signed_in(member).get(f"/teams/{team.pk}/").content.decode()
    assert f'href="/c/{shared.pk}/"' in html and "Quarterly plan" in html
    assert "My diary" not in html


def test_usage_and_budget_against_the_limit_this_period(team: Group, owner: Any,
                                                        member: Any) -> None:
    chosen = model()
    for user, tokens in [(owner, 300), (member, 200)]:
        UsageRecord.objects.create(user=user, team=team, model=chosen, prompt_tokens=tokens,
                                   completion_tokens=0, cost=Decimal("0.5"),
                                   currency=chosen.currency)
    UsageRecord.objects.create(user=member, team=None, model=chosen, prompt_tokens=9999,
                               currency=chosen.currency)  # not the team's
    Budget.objects.create(team=team, period=Budget.Period.MONTH, max_tokens=1000)
    html = signed_in(member).get(f"/teams/{team.pk}/").content.decode()
    assert "500 of 1000 tokens" in html
    assert 'value="50"' in html
    assert "9999" not in html
    # Members see the team's total; who used how much is for its managers.
    assert "data-usage-member" not in html
    managed = signed_in(owner).get(f"/teams/{team.pk}/").content.decode()
    assert 'data-usage-member="alice"' in managed and 'data-usage-member="bob"' in managed


def test_settings_save_and_offer_only_models_the_team_may_use(team: Group, owner: Any) -> None:
    model()  # the catalogue
    hidden = ModelConfig.objects.exclude(slug="llama-3.2-3b").first()
    assert hidden is not None
    hidden.groups.add(Group.objects.create(name="other"))
    allowed = ModelConfig.objects.get(slug="llama-3.2-3b")
    client = signed_in(owner)
    html = client.get(f"/teams/{team.pk}/").content.decode()
    assert f'value="{allowed.pk}"' in html and f'value="{hidden.pk}"' not in html
    refused = client.post(f"/teams/{team.pk}/settings/",
                          {"default_model": hidden.pk}, follow=True)
    assert "not saved" in _flash(refused)
    row = TeamSettings.objects.get(team=team)
    assert row.members_can_continue and row.default_model is None
    client.post(f"/teams/{team.pk}/settings/", {"default_model": allowed.pk})
    row.refresh_from_db()
    assert row.default_model == allowed and not row.members_can_continue
    event = AuditEvent.objects.get(action="team.settings_changed")
    assert event.actor == owner and set(event.details["fields"]) == {
        "members_can_continue", "default_model"}


def test_the_pages_read_in_chinese(team: Group, member: Any) -> None:
    client = signed_in(member)
    html = client.get(f"/teams/{team.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "成员" in html


def test_a_manager_who_removes_themselves_returns_to_the_team_list(team: Group,
                                                                   owner: Any) -> None:
    response = signed_in(owner).post(f"/teams/{team.pk}/members/{owner.pk}/remove/")
    assert response.status_code == 302 and response["Location"] == "/teams/"
    assert team_role(owner, team) == TeamRole.NONE


def test_the_team_page_costs_the_same_queries_for_many_members(
        team: Group, owner: Any, django_user_model: Any) -> None:
    client = signed_in(owner)
    client.get(f"/teams/{team.pk}/")  # sessions, translations and the like warm up

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(f"/teams/{team.pk}/").status_code == 200
        return len(captured)

    few = queries()
    for n in range(12):
        person = django_user_model.objects.create_user(f"person{n}", f"p{n}@example.com")
        team.user_set.add(person)
        chat = chat_services.conversation_create(person, model=model())
        Conversation.objects.filter(pk=chat.pk).update(team=team)
    assert queries() == few


def test_the_admins_team_page_points_to_the_product_page(team: Group, admin_user: Any) -> None:
    html = signed_in(admin_user).get(f"/admin/auth/group/{team.pk}/change/").content.decode()
    assert f'href="/teams/{team.pk}/"' in html
    listing = signed_in(admin_user).get("/admin/auth/group/").content.decode()
    assert f'href="/teams/{team.pk}/"' in listing


def test_the_teams_default_model_starts_a_members_new_chat(team: Group, owner: Any,
                                                            member: Any) -> None:
    model()  # the catalogue
    chosen = ModelConfig.objects.exclude(slug="llama-3.2-3b").order_by("-sort_order").first()
    assert chosen is not None
    signed_in(owner).post(f"/teams/{team.pk}/settings/",
                          {"members_can_continue": "on", "default_model": chosen.pk})
    html = signed_in(member).get("/").content.decode()
    option = re.search(rf'<option value="{re.escape(chosen.slug)}"[^>]*>', html)
    assert option and " selected" in option.group(0)


def test_out_of_range_ids_are_not_found_never_an_error(team: Group, owner: Any) -> None:
    huge = "9" * 30
    client = signed_in(owner)
    assert client.get(f"/teams/{huge}/").status_code == 404
    assert client.post(f"/teams/{team.pk}/members/{huge}/remove/", follow=True).status_code == 200
    assert client.post(f"/teams/{team.pk}/members/{huge}/role/", {"manager": "1"},
                       follow=True).status_code == 200
    assert client.post(f"/teams/{team.pk}/invitations/{huge}/revoke/").status_code == 404
    assert client.post(f"/teams/{team.pk}/settings/", {"default_model": huge},
                       follow=True).status_code == 200
    assert team.user_set.count() == 2


def test_a_team_with_many_conversations_shows_the_latest_and_says_so(team: Group,
                                                                      owner: Any) -> None:
    for _n in range(52):
        chat = chat_services.conversation_create(owner, model=model())
        Conversation.objects.filter(pk=chat.pk).update(team=team)
    html = signed_in(owner).get(f"/teams/{team.pk}/").content.decode()
    assert html.count('href="/c/') == 50
    assert "The 50 most recently active of 52" in html
