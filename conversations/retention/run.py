"""The retention run: delete the conversations whose period has passed, in batches.

Safe to run twice and at once (several server processes, beat and an operator): each batch
locks its rows (skipping rows another run holds, on PostgreSQL) and checks every condition
again inside its transaction; a conversation already deleted is simply not found.

Deleted with a conversation: its messages, its images (the files are removed from storage
after the commit, by the Attachment post_delete receiver), its share links. Usage records
stay: their conversation and message references are cleared (SET_NULL), so reports remain
true. A conversation with an answer being written is skipped and taken by a later run.
Each run that deleted something, and every run an operator asked for, is summarised in one
audit event: counts only, never titles.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from django.db import transaction
from django.db.models import Exists, Max, OuterRef, Q
from django.utils import timezone

from conversations import audit, events
from conversations.models import (
    ACTIVE_STATUSES,
    Attachment,
    Conversation,
    Message,
    ShareLink,
    UsageRecord,
)
from conversations.retention.policy import Policy, covering_teams, teams_of_owners
from conversations.sharing.links import share_group

log = logging.getLogger(__name__)

RETENTION_APPLIED = "retention.applied"
BATCH_SIZE = 100


@dataclass
class RetentionReport:
    dry_run: bool = False
    site_days: int | None = None
    examined: int = 0  # old enough for the shortest period
    conversations: int = 0  # deleted (or, in a dry run, due)
    messages: int = 0
    images: int = 0
    share_links: int = 0
    usage_records_kept: int = 0
    held: int = 0  # due by age, kept by a legal hold
    busy: int = 0  # due, skipped because an answer is being written
    batches: int = 0
    duration_ms: int = 0

    def details(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return (f"{verb} {self.conversations} conversation(s) ({self.messages} message(s), "
                f"{self.images} image(s), {self.share_links} share link(s)); "
                f"{self.usage_records_kept} usage record(s) kept; {self.held} kept under "
                f"legal hold; {self.busy} skipped while an answer is written")


def _last_activity(conversation: Any) -> datetime.datetime:
    last_message = getattr(conversation, "last_message_at", None)
    if last_message is not None and last_message > conversation.updated_at:
        return last_message  # type: ignore[no-any-return]
    return conversation.updated_at  # type: ignore[no-any-return]


def _candidates(cutoff: datetime.datetime) -> Any:
    """Conversations older than the shortest period (a query, evaluated in batches)."""
    active = Message.objects.filter(conversation=OuterRef("pk"), status__in=ACTIVE_STATUSES)
    return (Conversation.objects.filter(updated_at__lt=cutoff)
            .annotate(last_message_at=Max("messages__updated_at"), busy=Exists(active))
            .only("pk", "owner_id", "team_id", "updated_at", "legal_hold")
            .order_by("updated_at", "pk"))


def _due(conversations: Iterable[Any], policy: Policy, now: datetime.datetime,
         report: RetentionReport | None = None) -> list[Any]:
    """Those of `conversations` whose period has passed, not held, not being answered."""
    items = list(conversations)
    owner_teams = teams_of_owners(c.owner_id for c in items)
    due = []
    for conversation in items:
        teams = covering_teams(conversation, owner_teams)
        if conversation.legal_hold or policy.held(teams):
            # Counted only when its age alone would have deleted it.
            plain = policy.period_for(teams, ignore_holds=True)
            if (report is not None and plain is not None
                    and _last_activity(conversation) < now - datetime.timedelta(days=plain)):
                report.held += 1
            continue
        days = policy.period_for(teams)
        if days is None or _last_activity(conversation) >= now - datetime.timedelta(days=days):
            continue
        if conversation.busy:
            if report is not None:
                report.busy += 1
            continue
        due.append(conversation)
    return due


def apply_retention(*, now: datetime.datetime | None = None, dry_run: bool = False,
                    batch_size: int = BATCH_SIZE, actor: Any = None, request: Any = None,
                    always_audit: bool = False) -> RetentionReport:
    """Delete every conversation whose retention period has passed. Returns the counts."""
    started = time.monotonic()
    now = now or timezone.now()
    policy = Policy.load()
    report = RetentionReport(dry_run=dry_run, site_days=policy.site_days)
    shortest = policy.shortest_days()
    if shortest is not None:
        cutoff = now - datetime.timedelta(days=shortest)
        last: tuple[datetime.datetime, Any] | None = None
        while True:
            query = _candidates(cutoff)
            if last is not None:  # keyset paging: rows kept stay behind us
                query = query.filter(Q(updated_at__gt=last[0])
                                     | Q(updated_at=last[0], pk__gt=last[1]))
            batch = list(query[:batch_size])
            if not batch:
                break
            last = (batch[-1].updated_at, batch[-1].pk)
            report.examined += len(batch)
            report.batches += 1
            due = _due(batch, Policy.load(), now, report)  # holds placed meanwhile count
            if due:
                if dry_run:
                    _count_dry(due, report)
                else:
                    _delete_batch([c.pk for c in due], now, report)
    report.duration_ms = int((time.monotonic() - started) * 1000)
    if not dry_run and (report.conversations or always_audit):
        audit.record(RETENTION_APPLIED, actor=actor, request=request, target="retention",
                     details=report.details())
    if report.conversations or report.busy:
        log.info("retention: %s", report)
    return report


def _count_dry(due: list[Any], report: RetentionReport) -> None:
    ids = [c.pk for c in due]
    report.conversations += len(ids)
    report.messages += Message.objects.filter(conversation_id__in=ids).count()
    report.images += Attachment.objects.filter(conversation_id__in=ids).count()
    report.share_links += ShareLink.objects.filter(conversation_id__in=ids).count()
    report.usage_records_kept += UsageRecord.objects.filter(
        Q(conversation_id__in=ids) | Q(message__conversation_id__in=ids)).count()


def _delete_batch(ids: list[Any], now: datetime.datetime, report: RetentionReport) -> None:
    """One transaction: lock, check again, delete; then tell open pages and share viewers."""
    with transaction.atomic():
        # Rows another run holds are skipped: that run deletes them (PostgreSQL; SQLite
        # writes one transaction at a time anyway).
        locked = list(Conversation.objects.filter(pk__in=ids)
                      .select_for_update(skip_locked=True).values_list("pk", flat=True))
        # Checked again under the lock: a prompt, a hold or an answer since the first look.
        due = _due(_candidates(now).filter(pk__in=locked), Policy.load(), now)
        if not due:
            return
        due_ids = [c.pk for c in due]
        report.usage_records_kept += UsageRecord.objects.filter(
            Q(conversation_id__in=due_ids) | Q(message__conversation_id__in=due_ids)).count()
        tokens = list(ShareLink.objects.filter(conversation_id__in=due_ids)
                      .values_list("token", flat=True))
        _total, per_model = Conversation.objects.filter(pk__in=due_ids).delete()
        report.conversations += per_model.get(Conversation._meta.label, 0)
        report.messages += per_model.get(Message._meta.label, 0)
        report.images += per_model.get(Attachment._meta.label, 0)
        report.share_links += per_model.get(ShareLink._meta.label, 0)

        def tell() -> None:
            gone = events.revoked("deleted")
            for conversation_id in due_ids:
                events.publish_sync(events.conversation_group(conversation_id), gone)
            for token in tokens:
                events.publish_sync(share_group(token), gone)

        transaction.on_commit(tell)
