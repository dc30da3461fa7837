"""/manage/retention/ for superusers: the site's period, team rules, legal holds, a preview of
the next run and "run now". Everyone else gets a 404; bad input a clear error and no change;
every POST needs its CSRF token. The conversation list warns owners a week before."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from conversations.models import AuditEvent, Conversation, RetentionPolicy, TeamSettings
from conversations.retention import services
from conversations.retention.run import RETENTION_APPLIED
from tests.retention.conftest import DAY, chat_at
from tests.support import signed_in

pytestmark = pytest.mark.django_db

URL = "/manage/retention/"


def test_only_superusers_see_the_page_and_its_link(owner: Any, admin_user: Any,
                                                   django_user_model: Any) -> None:
    staff = django_user_model.objects.create_user("staffer", "s@example.com", "x", is_staff=True)
    for user in (owner, staff):
        assert signed_in(user).get(URL).status_code == 404
        assert URL not in signed_in(user).get("/").content.decode()
    anonymous = Client().get(URL)
    assert anonymous.status_code == 302 and "/login" in anonymous["Location"]
    admin = signed_in(admin_user)
    page = admin.get(URL)
    assert page.status_code == 200
    html = page.content.decode()
    assert "Retention policy" in html and "conversations are kept forever" in html
    assert f'href="{URL}"' in admin.get("/").content.decode()


def test_an_admin_sets_the_site_period_and_it_is_audited(admin_user: Any) -> None:
    admin = signed_in(admin_user)
    response = admin.post(URL, {"action": "site", "retention_days": "90"}, follow=True)
    assert response.status_code == 200
    assert "kept for 90 days" in response.content.decode()
    assert RetentionPolicy.objects.get(pk=1).retention_days == 90
    event = AuditEvent.objects.get(action=services.POLICY_CHANGED)
    assert event.actor == admin_user and event.details == {"days": [None, 90]}
    admin.post(URL, {"action": "site", "retention_days": ""})
    assert RetentionPolicy.objects.get(pk=1).retention_days is None


@pytest.mark.parametrize("bad", ["0", "-5", "abc", "99999999", "1.5"])
def test_a_bad_period_is_refused_with_a_clear_error_and_nothing_changes(
        admin_user: Any, bad: str) -> None:
    services.set_site_period(30)
    response = signed_in(admin_user).post(URL, {"action": "site", "retention_days": bad})
    assert response.status_code == 400
    assert 'class="field-error"' in response.content.decode()
    assert RetentionPolicy.objects.get(pk=1).retention_days == 30


def test_team_rules_longer_than_the_site_are_refused_keep_and_hold_are_saved(
        admin_user: Any) -> None:
    services.set_site_period(30)
    team = Group.objects.create(name="research")
    admin = signed_in(admin_user)
    refused = admin.post(URL, {"action": "team", "team": team.pk, "mode": "days",
                               "days": "45"})
    assert refused.status_code == 400
    assert "only be shorter than the site" in refused.content.decode()
    assert not TeamSettings.objects.filter(team=team).exists()

    assert admin.post(URL, {"action": "team", "team": team.pk, "mode": "days",
                            "days": "10"}).status_code == 302
    assert TeamSettings.objects.get(team=team).retention_days == 10
    admin.post(URL, {"action": "team", "team": team.pk, "mode": "keep", "days": "",
                     "legal_hold": "on"})
    rule = TeamSettings.objects.get(team=team)
    assert (rule.retention_keep, rule.retention_days, rule.legal_hold) == (True, None, True)
    event = AuditEvent.objects.filter(action=services.TEAM_CHANGED).first()
    assert event is not None and event.details["after"] == {"rule": "keep", "legal_hold": True}
    unknown = admin.post(URL, {"action": "team", "team": "999999", "mode": "keep"})
    assert unknown.status_code == 400


def test_an_admin_places_and_lifts_a_hold_by_pasting_a_link(owner: Any,
                                                            admin_user: Any) -> None:
    conversation = chat_at(owner, timezone.now(), "Board minutes")
    admin = signed_in(admin_user)
    placed = admin.post(URL, {"action": "hold",
                              "conversation": f"https://chat.example.com/c/{conversation.pk}/"},
                        follow=True)
    assert placed.status_code == 200
    assert Conversation.objects.get(pk=conversation.pk).legal_hold
    assert f'data-held="{conversation.pk}"' in placed.content.decode()
    nothing = admin.post(URL, {"action": "hold", "conversation": "not a link"})
    assert nothing.status_code == 400
    assert "No conversation has this link or id." in nothing.content.decode()
    admin.post(URL, {"action": "unhold", "conversation": str(conversation.pk)})
    assert not Conversation.objects.get(pk=conversation.pk).legal_hold
    assert admin.post(URL, {"action": "unhold", "conversation": "x"}).status_code == 404


def test_run_now_needs_the_box_ticked_then_deletes_and_is_audited(owner: Any,
                                                                   admin_user: Any) -> None:
    services.set_site_period(30)
    old = chat_at(owner, timezone.now() - 40 * DAY, "old")
    admin = signed_in(admin_user)
    page = admin.get(URL).content.decode()
    assert '<strong data-count="conversations">1</strong>' in page
    assert admin.post(URL, {"action": "run"}).status_code == 400
    assert Conversation.objects.filter(pk=old.pk).exists()
    done = admin.post(URL, {"action": "run", "confirm": "1"}, follow=True)
    assert "1 conversation(s) deleted" in done.content.decode()
    assert not Conversation.objects.filter(pk=old.pk).exists()
    assert AuditEvent.objects.get(action=RETENTION_APPLIED).actor == admin_user


def test_every_post_needs_its_csrf_token(admin_user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    response = client.post(URL, {"action": "site", "retention_days": "1"})
    assert response.status_code == 403
    assert not RetentionPolicy.objects.filter(retention_days=1).exists()


def test_the_page_reads_in_chinese(admin_user: Any) -> None:
    client = signed_in(admin_user)
    client.cookies["django_language"] = "zh-hans"
    html = client.get(URL).content.decode()
    assert "保留策略" in html


def test_owners_see_the_coming_deletion_in_their_list_and_team_members_do_not(
        owner: Any, member: Any) -> None:
    services.set_site_period(30)
    team = Group.objects.create(name="research")
    owner.groups.add(team)
    member.groups.add(team)
    chat_at(owner, timezone.now() - 27 * DAY, "going soon", team=team)
    chat_at(owner, timezone.now() - 2 * DAY, "fresh")
    html = signed_in(owner).get("/").content.decode()
    assert html.count("data-retention-badge") == 1
    assert "deleted in 3 days" in html
    assert "data-retention-badge" not in signed_in(member).get("/").content.decode()
    client = signed_in(owner)
    client.cookies["django_language"] = "zh-hans"
    assert "3 天后删除" in client.get("/sidebar/").content.decode()


def test_the_admin_console_places_a_legal_hold_for_superusers(owner: Any,
                                                              admin_user: Any) -> None:
    conversation = chat_at(owner, timezone.now(), "for the lawyers")
    response = signed_in(admin_user).post(
        "/admin/conversations/conversation/",
        {"action": "place_legal_hold", "_selected_action": [str(conversation.pk)]})
    assert response.status_code == 302
    assert Conversation.objects.get(pk=conversation.pk).legal_hold
    assert AuditEvent.objects.filter(action=services.HOLD_PLACED,
                                     actor=admin_user).exists()
