"""A team's members and managers, its settings and its usage against its budgets.

Membership changes go through `group.user_set`, so the existing m2m_changed receivers audit
them and close the sockets of whoever lost access (conversations/signals.py). Managers are a
subset of members: removing a member drops their manager role in the same transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext as _

from conversations import audit
from conversations.errors import ServiceError
from conversations.models import Budget, Conversation, TeamSettings
from conversations.usage.accounting import period_bounds
from conversations.usage.reports import UsageFilters, UsageRow, aggregate
from providers.models import ModelConfig

User = get_user_model()

TEAM_CREATED = "team.created"
TEAM_MANAGER_ADDED = "team.manager_added"
TEAM_MANAGER_REMOVED = "team.manager_removed"
TEAM_SETTINGS_CHANGED = "team.settings_changed"

MAX_PEOPLE_AT_ONCE = 100
MAX_ENTRY_CHARS = 254  # the longest e-mail address
SHARED_CONVERSATIONS_SHOWN = 50
_SEPARATORS = re.compile(r"[\s,;]+")


class TeamRefused(ServiceError):
    """A team change refused with a message for the page; nothing was changed."""

    def __init__(self, message: str) -> None:
        super().__init__("team_refused", message, 400)


# --- reading ----------------------------------------------------------------------------------
def settings_for(team: Group) -> TeamSettings:
    row, _created = TeamSettings.objects.get_or_create(team=team)
    return row


def teams_of(user: Any) -> QuerySet[Group]:
    """The teams a user's team list shows: all of them for a superuser, else their own."""
    qs = Group.objects.all()
    if not user.is_superuser:
        # A subquery, not user.groups: counting over that join would count only this user.
        qs = qs.filter(pk__in=user.groups.values("pk"))
    return qs.annotate(member_count=Count("user", distinct=True)).order_by("name")


def managed_team_ids(user: Any) -> set[int]:
    return set(TeamSettings.objects.filter(managers=user, team__user=user)
               .values_list("team_id", flat=True))


@dataclass(frozen=True)
class Member:
    user: Any
    is_manager: bool


def members_of(team: Group) -> list[Member]:
    managers = set(settings_for(team).managers.values_list("pk", flat=True))
    return [Member(user, user.pk in managers)
            for user in team.user_set.order_by("username")]


def models_for_team(team: Group) -> QuerySet[ModelConfig]:
    """The models a team's members may pick: enabled, open to everyone or to this team."""
    return (ModelConfig.objects.usable().filter(Q(groups__isnull=True) | Q(groups=team))
            .select_related("provider").distinct().order_by("sort_order", "display_name"))


def shared_conversations(team: Group) -> QuerySet[Conversation]:
    return (Conversation.objects.filter(team=team).select_related("owner", "model")
            .order_by("-updated_at")[:SHARED_CONVERSATIONS_SHOWN])


# --- usage against budgets --------------------------------------------------------------------
@dataclass
class BudgetLine:
    budget: Budget
    tokens: int
    cost: Decimal
    resets_at: datetime
    percent: int  # of the tighter limit, capped at 100 for the bar

    @property
    def over_warning(self) -> bool:
        return self.percent >= self.budget.warn_percent


@dataclass
class TeamUsage:
    period_label: str
    start: datetime
    budgets: list[BudgetLine] = field(default_factory=list)
    rows: list[UsageRow] = field(default_factory=list)  # per member and currency
    totals: list[UsageRow] = field(default_factory=list)  # per currency


def _report(team: Group, period: str, now: datetime) -> tuple[Any, Any]:
    bounds = period_bounds(period, now)
    # Report filters are whole local days; a budget period is too (accounting.period_bounds).
    filters = UsageFilters(team_id=team.pk, date_from=bounds.start.date(),
                           date_to=(bounds.end - timedelta(days=1)).date())
    return bounds, aggregate(filters, "user")


def usage_of(team: Group, now: datetime | None = None) -> TeamUsage:
    """This period's usage of the team (the ledger's team rows), per member, and each enabled
    team budget with what is used of it: the same sums the budget check refuses on."""
    now = now or timezone.now()
    budgets = list(Budget.objects.filter(team=team, enabled=True).order_by("period", "pk"))
    period = budgets[0].period if budgets else Budget.Period.MONTH
    bounds, report = _report(team, period, now)
    usage = TeamUsage(period_label=str(Budget.Period(period).label), start=bounds.start,
                      rows=report.rows, totals=report.totals)
    for budget in budgets:
        b_bounds, b_report = (bounds, report) if budget.period == period else _report(
            team, budget.period, now)
        tokens = sum(row.total_tokens for row in b_report.totals)
        cost = sum((row.cost for row in b_report.totals), Decimal(0))
        shares = []
        if budget.max_tokens:
            shares.append(Decimal(tokens) * 100 / Decimal(budget.max_tokens))
        if budget.max_cost:
            shares.append(cost * 100 / budget.max_cost)
        percent = int(min(max(shares, default=Decimal(0)), Decimal(100)))
        usage.budgets.append(BudgetLine(budget, tokens, cost, b_bounds.end, percent))
    return usage


# --- writing ----------------------------------------------------------------------------------
def create_team(name: str, *, actor: Any, request: HttpRequest | None = None) -> Group:
    name = " ".join(name.split())
    if not name:
        raise TeamRefused(_("Give the team a name."))
    if len(name) > 150:
        raise TeamRefused(_("A team name has at most 150 characters."))
    if Group.objects.filter(name__iexact=name).exists():
        raise TeamRefused(_("A team named “%(name)s” already exists.") % {"name": name})
    try:
        with transaction.atomic():
            team = Group.objects.create(name=name)
            TeamSettings.objects.create(team=team)
    except IntegrityError:  # created meanwhile by someone else
        raise TeamRefused(_("A team named “%(name)s” already exists.") % {"name": name}) \
            from None
    audit.record(TEAM_CREATED, actor=actor, request=request, target=audit.target_of(team),
                 details={"team": team.name})
    return team


def parse_people(text: str) -> list[str]:
    """Usernames or e-mail addresses, separated by new lines, commas, semicolons or spaces;
    each once, in the order given."""
    entries: list[str] = []
    seen: set[str] = set()
    for entry in _SEPARATORS.split(text or ""):
        if entry and entry.lower() not in seen:
            seen.add(entry.lower())
            entries.append(entry)
    return entries


def find_person(entry: str) -> Any | None:
    """An active account by exact username, else by e-mail (only when exactly one has it)."""
    if len(entry) > MAX_ENTRY_CHARS:
        return None
    found = User.objects.filter(username=entry, is_active=True).first()
    if found is None and "@" in entry:
        matches = list(User.objects.filter(email__iexact=entry, is_active=True)[:2])
        found = matches[0] if len(matches) == 1 else None
    return found


@dataclass
class AddResult:
    added: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def add_members(team: Group, text: str, *, actor: Any,
                request: HttpRequest | None = None) -> AddResult:
    """Add everyone named in `text` who has an account; say who was added, who was already
    a member and which names matched no account."""
    entries = parse_people(text)
    if not entries:
        raise TeamRefused(_("Enter at least one username or e-mail address."))
    if len(entries) > MAX_PEOPLE_AT_ONCE:
        raise TeamRefused(_("At most %(n)s people at once.") % {"n": MAX_PEOPLE_AT_ONCE})
    result = AddResult()
    current = set(team.user_set.values_list("pk", flat=True))
    to_add: dict[int, Any] = {}
    for entry in entries:
        person = find_person(entry)
        if person is None:
            result.unknown.append(entry)
        elif person.pk in current or person.pk in to_add:
            result.already.append(person.get_username())
        else:
            to_add[person.pk] = person
            result.added.append(person.get_username())
    if to_add:
        with transaction.atomic(), audit.acting(request, actor=actor):
            team.user_set.add(*to_add.values())
    return result


def _member(team: Group, user_id: Any) -> Any:
    try:
        person = team.user_set.filter(pk=int(user_id)).first()
    except (TypeError, ValueError):
        person = None
    if person is None:
        raise TeamRefused(_("This person is not a member of the team."))
    return person


def remove_member(team: Group, user_id: Any, *, actor: Any,
                  request: HttpRequest | None = None) -> Any:
    """Take someone out of the team (and its managers). Their open pages lose the team's
    conversations at once (the membership signal tells their sockets)."""
    person = _member(team, user_id)
    with transaction.atomic(), audit.acting(request, actor=actor):
        row = settings_for(team)
        if row.managers.filter(pk=person.pk).exists():
            row.managers.remove(person)
            audit.record(TEAM_MANAGER_REMOVED, actor=actor, request=request,
                         target=audit.target_of(person),
                         details={"username": person.get_username(), "team": team.name,
                                  "team_id": team.pk})
        team.user_set.remove(person)
    return person


def set_manager(team: Group, user_id: Any, manager: bool, *, actor: Any,
                request: HttpRequest | None = None) -> Any:
    person = _member(team, user_id)
    with transaction.atomic():
        row = settings_for(team)
        if row.managers.filter(pk=person.pk).exists() == manager:
            return person
        (row.managers.add if manager else row.managers.remove)(person)
        audit.record(TEAM_MANAGER_ADDED if manager else TEAM_MANAGER_REMOVED, actor=actor,
                     request=request, target=audit.target_of(person),
                     details={"username": person.get_username(), "team": team.name,
                              "team_id": team.pk})
    return person


def make_manager_member(team: Group, person: Any) -> None:
    """Add `person` to the team and its managers (an invitation with the manager role)."""
    team.user_set.add(person)
    settings_for(team).managers.add(person)


def update_settings(team: Group, *, members_can_continue: bool, default_model: Any,
                    actor: Any, request: HttpRequest | None = None) -> list[str]:
    """Save the team's switches; the default model must be one the team may use. The names
    of the fields that changed."""
    if default_model is not None and not models_for_team(team).filter(
            pk=default_model.pk).exists():
        raise TeamRefused(_("This model is not available to the team."))
    with transaction.atomic():
        row = TeamSettings.objects.select_for_update().get(pk=settings_for(team).pk)
        changed = []
        if row.members_can_continue != members_can_continue:
            row.members_can_continue = members_can_continue
            changed.append("members_can_continue")
        if row.default_model_id != (default_model.pk if default_model else None):
            row.default_model = default_model
            changed.append("default_model")
        if changed:
            row.save(update_fields=changed)
            audit.record(TEAM_SETTINGS_CHANGED, actor=actor, request=request,
                         target=audit.target_of(team),
                         details={"team": team.name, "fields": changed,
                                  "default_model": default_model.slug if default_model
                                  else None, "members_can_continue": members_can_continue})
    return changed
