"""Writes of the retention policy, each audited: the site's period, a team's rule, legal holds.

Each refuses bad input with a ServiceError and then changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import Group
from django.db import transaction
from django.utils.translation import gettext as _

from conversations import audit
from conversations.errors import ServiceError
from conversations.models import Conversation, RetentionPolicy, TeamSettings
from conversations.retention.policy import MAX_DAYS, forget_cached_policy

POLICY_CHANGED = "retention.policy_changed"
TEAM_CHANGED = "retention.team_changed"
HOLD_PLACED = "retention.hold_placed"
HOLD_LIFTED = "retention.hold_lifted"


def site_days() -> int | None:
    return (RetentionPolicy.objects.filter(pk=1).values_list("retention_days", flat=True)
            .first()) or None


def _check_days(days: int | None) -> None:
    if days is not None and not 1 <= days <= MAX_DAYS:
        raise ServiceError("bad_days", _("A period is a whole number of days from 1 to "
                                         "%(max)d.") % {"max": MAX_DAYS})


def set_site_period(days: int | None, *, actor: Any = None, request: Any = None) -> None:
    """The site-wide period; None keeps conversations forever."""
    _check_days(days)
    with transaction.atomic():
        policy, _created = RetentionPolicy.objects.select_for_update().get_or_create(pk=1)
        before = policy.retention_days
        if before == days:
            return
        policy.retention_days = days
        policy.updated_by = actor if getattr(actor, "is_authenticated", False) else None
        policy.save()
        forget_cached_policy()
        audit.record(POLICY_CHANGED, actor=actor, request=request, target="retention",
                     details={"days": [before, days]})


def team_rule_label(settings: TeamSettings | None) -> str:
    if settings is None:
        return "site"
    if settings.retention_keep:
        return "keep"
    return f"{settings.retention_days} days" if settings.retention_days else "site"


def set_team_rule(team: Group, *, mode: str, days: int | None = None, legal_hold: bool,
                  actor: Any = None, request: Any = None) -> TeamSettings:
    """A team's rule: "site" (follow the site), "days" (shorter than the site's) or "keep";
    and its legal hold."""
    if mode not in {"site", "days", "keep"}:
        raise ServiceError("bad_mode", _("Choose how long this team's conversations are kept."))
    if mode == "days":
        if days is None:
            raise ServiceError("bad_days", _("Enter the number of days."))
        _check_days(days)
        site = site_days()
        if site is not None and days > site:
            raise ServiceError("longer_than_site", _(
                "A team's period may only be shorter than the site's (%(days)d days). To keep "
                "a team's conversations longer, choose “keep”.") % {"days": site})
    with transaction.atomic():
        settings, _created = TeamSettings.objects.select_for_update().get_or_create(team=team)
        before = {"rule": team_rule_label(settings), "legal_hold": settings.legal_hold}
        settings.retention_days = days if mode == "days" else None
        settings.retention_keep = mode == "keep"
        settings.legal_hold = legal_hold
        settings.save(update_fields=["retention_days", "retention_keep", "legal_hold"])
        after = {"rule": team_rule_label(settings), "legal_hold": legal_hold}
        forget_cached_policy()
        if after != before:
            audit.record(TEAM_CHANGED, actor=actor, request=request,
                         target=audit.target_of(team),
                         details={"team": team.name, "before": before, "after": after})
    return settings


def set_legal_hold(conversations: Iterable[Conversation] | Any, on: bool, *, actor: Any = None,
                   request: Any = None) -> int:
    """Place (or lift) a legal hold on these conversations; one audit event each."""
    changed = 0
    for conversation in conversations:
        updated = Conversation.objects.filter(pk=conversation.pk, legal_hold=not on).update(
            legal_hold=on)  # a queryset update: the last activity stays what it was
        if updated:
            changed += 1
            audit.record(HOLD_PLACED if on else HOLD_LIFTED, actor=actor, request=request,
                         target=audit.target_of(conversation),
                         details={"owner": conversation.owner.get_username()})
    return changed
