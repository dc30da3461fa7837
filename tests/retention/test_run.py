"""The retention run deletes exactly what its period says, with images and share links, keeps
usage records, and never touches a conversation under legal hold or one being answered.
Time is frozen with time-machine (or passed as `now`)."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.utils import timezone

from conversations.answers import jobs
from conversations.errors import ServiceError
from conversations.models import (
    Attachment,
    AuditEvent,
    Conversation,
    Message,
    MessageStatus,
    RetentionPolicy,
    ShareLink,
    TeamSettings,
    UsageRecord,
)
from conversations.retention import services
from conversations.retention.policy import deadlines
from conversations.retention.run import RETENTION_APPLIED, apply_retention
from conversations.retention.tasks import apply_retention_task
from tests.conftest import ROOT, child_env
from tests.retention.conftest import DAY, NOW, chat_at, stored_files
from tests.support import queue_answer

pytestmark = pytest.mark.django_db(transaction=True)


def site(days: int | None) -> None:
    services.set_site_period(days)


def alive(*conversations: Conversation) -> list[bool]:
    return [Conversation.objects.filter(pk=c.pk).exists() for c in conversations]


def test_a_site_period_deletes_exactly_the_conversations_older_than_it(
        owner: Any, member: Any, media: Path) -> None:
    site(30)
    old = chat_at(owner, NOW - 31 * DAY, "old", image=True, share=True)
    young = chat_at(owner, NOW - 29 * DAY, "young", image=True)
    others_old = chat_at(member, NOW - 45 * DAY, "member's old")
    old_file = Attachment.objects.get(conversation=old).file.name
    young_file = Attachment.objects.get(conversation=young).file.name
    old_records = list(UsageRecord.objects.filter(message__conversation=old)
                       .values_list("pk", flat=True))
    assert old_records and old_file in stored_files(media)

    report = apply_retention(now=NOW)

    assert alive(old, young, others_old) == [False, True, False]
    assert (report.conversations, report.messages, report.images, report.share_links) == (
        2, 4, 1, 1)
    # The image file went with its conversation; the young one's stayed.
    assert old_file not in stored_files(media)
    assert young_file in stored_files(media)
    assert not ShareLink.objects.filter(conversation_id=old.pk).exists()
    # Usage records stay for the reports, their references cleared.
    kept = UsageRecord.objects.filter(pk__in=old_records)
    assert kept.count() == len(old_records)
    assert all(r.conversation_id is None and r.message_id is None for r in kept)
    assert report.usage_records_kept == 2


def test_without_a_period_everything_is_kept_forever(owner: Any) -> None:
    ancient = chat_at(owner, NOW - 3650 * DAY, "ancient")
    report = apply_retention(now=NOW)
    assert alive(ancient) == [True]
    assert report.conversations == 0
    assert not AuditEvent.objects.filter(action=RETENTION_APPLIED).exists()


def test_a_legal_hold_keeps_a_conversation_until_it_is_lifted(owner: Any,
                                                               admin_user: Any) -> None:
    site(30)
    held = chat_at(owner, NOW - 400 * DAY, "held")
    services.set_legal_hold([held], True, actor=admin_user)

    report = apply_retention(now=NOW)
    assert alive(held) == [True]
    assert report.held == 1 and report.conversations == 0
    placed = AuditEvent.objects.get(action=services.HOLD_PLACED)
    assert placed.actor == admin_user and placed.target == f"conversation {held.pk}"

    services.set_legal_hold([Conversation.objects.get(pk=held.pk)], False, actor=admin_user)
    apply_retention(now=NOW)
    assert alive(held) == [False]


def test_a_team_under_legal_hold_keeps_its_shared_and_its_members_conversations(
        owner: Any, member: Any, outsider: Any) -> None:
    site(30)
    team = Group.objects.create(name="legal")
    owner.groups.add(team)
    shared = chat_at(owner, NOW - 90 * DAY, "shared", team=team)
    private = chat_at(owner, NOW - 90 * DAY, "private of a member")
    others = chat_at(outsider, NOW - 90 * DAY, "not in the team")
    services.set_team_rule(team, mode="site", legal_hold=True)

    report = apply_retention(now=NOW)

    assert alive(shared, private, others) == [True, True, False]
    assert report.held == 2


def test_a_team_may_shorten_the_site_period_or_keep_and_the_longest_period_wins(
        owner: Any, member: Any, outsider: Any) -> None:
    site(90)
    short = Group.objects.create(name="short")
    keep = Group.objects.create(name="keep")
    owner.groups.add(short)
    member.groups.add(short, keep)
    services.set_team_rule(short, mode="days", days=10, legal_hold=False)
    services.set_team_rule(keep, mode="keep", legal_hold=False)

    owners = chat_at(owner, NOW - 11 * DAY, "short team, 11 days")
    owners_young = chat_at(owner, NOW - 9 * DAY, "short team, 9 days")
    # The member is in "short" and in "keep": keep wins.
    members = chat_at(member, NOW - 400 * DAY, "in both teams")
    # The outsider follows the site's 90 days.
    outsiders = chat_at(outsider, NOW - 11 * DAY, "site period")

    apply_retention(now=NOW)

    assert alive(owners, owners_young, members, outsiders) == [False, True, True, True]


def test_a_team_period_longer_than_the_site_is_refused_and_nothing_changes(owner: Any) -> None:
    site(30)
    team = Group.objects.create(name="research")
    with pytest.raises(ServiceError) as refused:
        services.set_team_rule(team, mode="days", days=31, legal_hold=False)
    assert refused.value.code == "longer_than_site"
    assert not TeamSettings.objects.filter(team=team, retention_days__isnull=False).exists()
    with pytest.raises(ServiceError):
        services.set_site_period(0)
    assert RetentionPolicy.objects.get(pk=1).retention_days == 30


def test_a_site_period_shortened_later_also_shortens_a_team_period(owner: Any) -> None:
    site(60)
    team = Group.objects.create(name="research")
    owner.groups.add(team)
    services.set_team_rule(team, mode="days", days=50, legal_hold=False)
    site(20)
    conversation = chat_at(owner, NOW - 21 * DAY)
    apply_retention(now=NOW)
    assert alive(conversation) == [False]


def test_a_conversation_being_answered_is_not_deleted_mid_answer(owner: Any) -> None:
    site(30)
    busy = chat_at(owner, NOW - 31 * DAY, "busy", answering=True)
    report = apply_retention(now=NOW)
    assert alive(busy) == [True] and report.busy == 1
    # The answer finishes now (the runner saves the message): that is activity too.
    Message.objects.filter(conversation=busy, status=MessageStatus.STREAMING).update(
        status=MessageStatus.COMPLETE, updated_at=NOW)
    apply_retention(now=NOW + 29 * DAY)
    assert alive(busy) == [True]
    apply_retention(now=NOW + 31 * DAY)
    assert alive(busy) == [False]


def test_a_new_message_restarts_the_period(owner: Any) -> None:
    site(30)
    conversation = chat_at(owner, NOW - 100 * DAY, "revived")
    with time_machine.travel(NOW - 2 * DAY, tick=False):
        answer = queue_answer(owner, conversation, "Still here?")
        Message.objects.filter(pk=answer.pk).update(status=MessageStatus.COMPLETE)
    apply_retention(now=NOW)
    assert alive(conversation) == [True]
    apply_retention(now=NOW + 29 * DAY)
    assert alive(conversation) == [False]


def test_running_twice_deletes_nothing_more_and_each_deleting_run_is_one_audit_event(
        owner: Any) -> None:
    site(30)
    chat_at(owner, NOW - 40 * DAY, "Secret merger plans")
    chat_at(owner, NOW - 50 * DAY, "Another private title")
    first = apply_retention(now=NOW, batch_size=1)
    second = apply_retention(now=NOW, batch_size=1)
    assert (first.conversations, first.batches) == (2, 2)
    assert second.conversations == 0
    events = list(AuditEvent.objects.filter(action=RETENTION_APPLIED))
    assert len(events) == 1
    details = events[0].details
    assert details["conversations"] == 2 and details["messages"] == 4
    assert "Secret" not in str(details) and "private" not in str(details)


def test_a_dry_run_counts_and_changes_nothing(owner: Any) -> None:
    site(30)
    old = chat_at(owner, NOW - 40 * DAY, image=True, share=True)
    report = apply_retention(now=NOW, dry_run=True)
    assert (report.conversations, report.messages, report.images, report.share_links) == (
        1, 2, 1, 1)
    assert alive(old) == [True]
    assert not AuditEvent.objects.filter(action=RETENTION_APPLIED).exists()


def test_the_command_and_the_periodic_task_apply_the_policy(owner: Any,
                                                            capsys: Any) -> None:
    site(30)
    first = chat_at(owner, timezone.now() - 40 * DAY)
    call_command("apply_retention", "--dry-run")
    assert "would delete 1 conversation(s)" in capsys.readouterr().out
    assert alive(first) == [True]
    call_command("apply_retention")
    assert "deleted 1 conversation(s)" in capsys.readouterr().out
    assert alive(first) == [False]
    # The task beat runs (run here; a real worker runs it in test_celery_retention.py), and the
    # server's timer runs it by name.
    second = chat_at(owner, timezone.now() - 40 * DAY)
    apply_retention_task.apply()
    assert alive(second) == [False]
    third = chat_at(owner, timezone.now() - 40 * DAY)
    assert "deleted 1 conversation" in jobs.run_task_by_name(jobs.RETENTION_TASK)
    assert alive(third) == [False]


def test_runs_in_several_processes_at_once_delete_each_conversation_once(owner: Any) -> None:
    site(30)
    old = [chat_at(owner, timezone.now() - (31 + i) * DAY, f"old {i}") for i in range(12)]
    young = chat_at(owner, timezone.now() - 5 * DAY, "young")
    env = child_env()
    procs = [subprocess.Popen([sys.executable, "manage.py", "apply_retention"], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert alive(*old) == [False] * 12
    assert alive(young) == [True]
    deleted = sum(e.details["conversations"]
                  for e in AuditEvent.objects.filter(action=RETENTION_APPLIED))
    assert deleted == 12


def test_the_warning_comes_a_week_before_and_counts_days(owner: Any, member: Any) -> None:
    site(30)
    soon = chat_at(owner, NOW - 27 * DAY, "soon")
    later = chat_at(owner, NOW - 20 * DAY, "later")
    today = chat_at(owner, NOW - 30 * DAY + datetime.timedelta(hours=1), "today")
    held = chat_at(owner, NOW - 29 * DAY, "held")
    services.set_legal_hold([held], True)
    found = deadlines(Conversation.objects.filter(owner=owner), now=NOW)
    assert found[soon.pk].days_left == 3
    assert found[today.pk].days_left == 1
    assert later.pk not in found and held.pk not in found
