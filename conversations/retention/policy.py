"""The retention policy: how long a conversation is kept after its last activity.

- The site's period (RetentionPolicy pk=1; no row or no days: keep forever).
- A team may shorten it (TeamSettings.retention_days, never longer than the site's) or keep
  its conversations (retention_keep); a team under legal hold keeps them too.
- A conversation under legal hold (Conversation.legal_hold) is never deleted.

Which teams cover a conversation: the team it is shared with, and every team its owner is in.
When several cover it, the longest period wins (keep beats any number): a conversation is
deleted only when every policy that covers it says so.

Last activity: the later of the conversation's `updated_at` (a prompt, a new attempt, a
rename, pin, archive or model switch) and its newest message's `updated_at` (an answer
finishing).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from conversations.models import Conversation, RetentionPolicy, TeamSettings

# Owners see the coming deletion this long before it happens.
WARN_DAYS = 7
# The longest period an admin may set (100 years): a bigger number is a typo.
MAX_DAYS = 36_500
# The warnings in every conversation list read the policy from the cache: no query on a page
# while nothing is deleted. The run itself always reads the database.
CACHE_KEY = "retention:policy:v1"
CACHE_SECONDS = 60


@dataclass(frozen=True)
class TeamRule:
    days: int | None = None  # shorter than the site's; None: the site's
    keep: bool = False
    hold: bool = False


@dataclass
class Policy:
    """The site's period and every team's rule, read once (two queries)."""

    site_days: int | None = None
    teams: dict[int, TeamRule] = field(default_factory=dict)

    @classmethod
    def load(cls) -> Policy:
        site = (RetentionPolicy.objects.filter(pk=1)
                .values_list("retention_days", flat=True).first())
        rows = TeamSettings.objects.filter(
            Q(retention_days__isnull=False) | Q(retention_keep=True) | Q(legal_hold=True)
        ).values("team_id", "retention_days", "retention_keep", "legal_hold")
        teams = {row["team_id"]: TeamRule(row["retention_days"], row["retention_keep"],
                                          row["legal_hold"]) for row in rows}
        return cls(site_days=site or None, teams=teams)

    @property
    def deletes_anything(self) -> bool:
        return self.shortest_days() is not None

    def team_days(self, team_id: int, *, ignore_hold: bool = False) -> int | None:
        """The period a team's rule gives (None: keep)."""
        rule = self.teams.get(team_id)
        if rule is None:
            return self.site_days
        if rule.keep or (rule.hold and not ignore_hold):
            return None
        if rule.days:
            return min(rule.days, self.site_days) if self.site_days else rule.days
        return self.site_days

    def held(self, team_ids: Iterable[int]) -> bool:
        return any(self.teams.get(t, TeamRule()).hold for t in team_ids)

    def period_for(self, team_ids: Iterable[int], *, ignore_holds: bool = False
                   ) -> int | None:
        """Days a conversation covered by these teams is kept (None: forever)."""
        ids = set(team_ids)
        if not ids:
            return self.site_days
        periods = [self.team_days(t, ignore_hold=ignore_holds) for t in ids]
        if any(p is None for p in periods):
            return None
        return max(p for p in periods if p is not None)

    def shortest_days(self) -> int | None:
        """The shortest period anything may have: nothing younger is ever deleted."""
        found = [d for d in [self.site_days, *(self.team_days(t) for t in self.teams)]
                 if d is not None]
        return min(found) if found else None


def cached_policy() -> Policy:
    """The policy for warnings: from the cache (shared with Redis), at most CACHE_SECONDS old
    when it was changed other than through retention.services (the admin's team inline)."""
    policy = cache.get(CACHE_KEY)
    if not isinstance(policy, Policy):
        policy = Policy.load()
        cache.set(CACHE_KEY, policy, CACHE_SECONDS)
    return policy


def forget_cached_policy() -> None:
    """After a change: now, and again once its transaction committed."""
    cache.delete(CACHE_KEY)
    transaction.on_commit(lambda: cache.delete(CACHE_KEY))


def teams_of_owners(owner_ids: Iterable[int]) -> dict[int, set[int]]:
    """owner id -> the ids of the teams they are in (one query)."""
    through = get_user_model().groups.through
    teams: dict[int, set[int]] = {}
    for user_id, group_id in (through.objects.filter(user_id__in=set(owner_ids))
                              .values_list("user_id", "group_id")):
        teams.setdefault(user_id, set()).add(group_id)
    return teams


def covering_teams(conversation: Conversation, owner_teams: dict[int, set[int]]) -> set[int]:
    teams = set(owner_teams.get(conversation.owner_id, set()))
    if conversation.team_id is not None:
        teams.add(conversation.team_id)
    return teams


@dataclass(frozen=True)
class Deadline:
    at: datetime.datetime
    days_left: int  # whole days, rounded up; 0 when due

    @property
    def due(self) -> bool:
        return self.days_left <= 0


def deadlines(conversations: Iterable[Conversation], *, now: datetime.datetime | None = None,
              warn_days: int = WARN_DAYS, policy: Policy | None = None
              ) -> dict[Any, Deadline]:
    """conversation id -> when it will be deleted, for those due within `warn_days`.

    No query while the policy deletes nothing (it comes from the cache), one otherwise (the
    owners' teams), whatever the number of conversations. Last activity here is `updated_at`:
    an answer finishing a few seconds later only makes the warning come that much earlier.
    """
    items = list(conversations)
    policy = policy or cached_policy()
    if not items or not policy.deletes_anything:
        return {}
    now = now or timezone.now()
    owner_teams = teams_of_owners(c.owner_id for c in items)
    found: dict[Any, Deadline] = {}
    for conversation in items:
        if conversation.legal_hold:
            continue
        teams = covering_teams(conversation, owner_teams)
        days = None if policy.held(teams) else policy.period_for(teams)
        if days is None:
            continue
        at = conversation.updated_at + datetime.timedelta(days=days)
        left = (at - now).total_seconds() / 86_400
        if left <= warn_days:
            found[conversation.pk] = Deadline(at=at, days_left=max(0, math.ceil(left)))
    return found


def deadline_of(conversation: Conversation, *, now: datetime.datetime | None = None
                ) -> Deadline | None:
    """One conversation's coming deletion, when it is within the warning."""
    return deadlines([conversation], now=now).get(conversation.pk)
