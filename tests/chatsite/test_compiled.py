"""Reads compiled once (chatsite/compiled.py): the same answers as the ORM's own queries, on
whichever database the suite runs on, with no result kept between calls."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chatsite.compiled import Compiled
from conversations.chat import services
from conversations.models import Message, UsageRecord
from conversations.usage import accounting
from providers.models import ModelConfig, is_visible_to
from tests.support import model

pytestmark = pytest.mark.django_db


def _orm_counts(user: Any, minute_ago: Any, stale: Any) -> tuple[int, Any, int]:
    rows = accounting._answer_counts_query(user.pk, min(minute_ago, stale), minute_ago, stale)
    found = list(rows)
    return (found[0][0], found[0][1], found[0][2]) if found else (0, None, 0)


def test_the_compiled_limits_read_counts_what_the_orm_counts(owner: Any, member: Any) -> None:
    now = timezone.now()
    chosen = model()
    for user, minutes_ago, finished in ((owner, 0.2, False), (owner, 0.5, True),
                                        (owner, 5, True), (member, 0.1, False)):
        record = accounting.record_start(user, chosen, source=UsageRecord.Source.API)
        UsageRecord.objects.filter(pk=record.pk).update(
            started_at=now - timedelta(minutes=minutes_ago),
            finished_at=now if finished else None)
    minute_ago, stale = now - timedelta(seconds=60), now - timedelta(seconds=600)
    recent, first, running = accounting._answer_counts(owner, minute_ago, stale)
    assert (recent, running) == (2, 1)
    assert first is not None and abs(first - (now - timedelta(minutes=0.5))) < timedelta(
        milliseconds=1)
    assert (recent, first, running) == _orm_counts(owner, minute_ago, stale)
    assert accounting._answer_counts(member, minute_ago, stale)[::2] == (1, 1)


def test_a_user_with_no_answers_reads_as_zeros(outsider: Any) -> None:
    now = timezone.now()
    assert accounting._answer_counts(outsider, now - timedelta(seconds=60),
                                     now - timedelta(seconds=600)) == (0, None, 0)


def test_model_visibility_is_read_anew_for_owner_member_and_outsider(
        owner: Any, member: Any, outsider: Any, admin_user: Any) -> None:
    chosen = model()
    team = Group.objects.create(name="llamas")
    member.groups.add(team)
    people = (owner, member, outsider, admin_user)
    assert all(is_visible_to(person, chosen.pk) for person in people)
    chosen.groups.add(team)  # only the team (and superusers) may use it now
    assert [is_visible_to(person, chosen.pk) for person in people] == [
        False, True, False, True]
    for person in people:
        expected = ModelConfig.objects.visible_to(person).filter(pk=chosen.pk).exists()
        assert is_visible_to(person, chosen.pk) is expected
    ModelConfig.objects.filter(pk=chosen.pk).update(enabled=False)
    assert not any(is_visible_to(person, chosen.pk) for person in people)
    member.is_active = False
    assert not is_visible_to(member, chosen.pk)


def test_a_hidden_model_refuses_the_message_and_stores_nothing(owner: Any) -> None:
    chosen = model()
    conversation = services.conversation_create(owner, model=chosen)
    chosen.groups.add(Group.objects.create(name="others"))
    with pytest.raises(services.ServiceError) as refused:
        services.message_post(owner, conversation, text="hello?",
                              client_id=uuid.uuid4())
    assert refused.value.code == "model_unavailable"
    assert not Message.objects.filter(conversation=conversation).exists()


def test_it_runs_one_statement_through_the_connection_and_refuses_values_it_cannot_compile(
        owner: Any) -> None:
    statement = Compiled(
        lambda user, since: UsageRecord.objects.filter(user=user, started_at__gte=since)
        .values_list("pk"),
        user=UsageRecord._meta.get_field("user"), since=UsageRecord._meta.get_field("started_at"))
    with CaptureQueriesContext(connection) as queries:
        assert statement.rows(user=owner.pk, since=timezone.now()) == []
    assert len(queries) == 1
    # The compiled SQL lives on the connection (each thread's own), not on the statement: a
    # thread's connection that goes away takes its shapes with it.
    assert statement in connection._compiled_shapes  # type: ignore[attr-defined]
    assert set(vars(statement)) == {"build", "fields"}
    with pytest.raises(ValueError):
        statement.rows(user=None, since=timezone.now())
    with pytest.raises(ValueError):
        statement.rows(user=[owner.pk], since=timezone.now())
