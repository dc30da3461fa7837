"""Usage, budgets and rate limits: one ledger (UsageRecord) for every path, web and API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Count, Min, Q, Sum
from django.utils import timezone
from django.utils.translation import gettext as _

from chatsite.compiled import Compiled
from conversations.errors import ServiceError
from conversations.models import Budget, UsageRecord
from providers.models import ModelConfig


class LimitExceeded(ServiceError):
    """A limit stops this request; the message says which and when it resets."""

    def __init__(self, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(code, message, 429 if code != "prompt_too_large" else 400,
                         retry_after=retry_after)


@dataclass
class Period:
    start: datetime
    end: datetime


def period_bounds(period: str, now: datetime | None = None) -> Period:
    local = timezone.localtime(now or timezone.now())
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == Budget.Period.MONTH:
        start = start.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    else:
        end = start + timedelta(days=1)
    return Period(start, end)


def _in_words(moment: datetime, now: datetime) -> str:
    seconds = max(0, int((moment - now).total_seconds()))
    if seconds < 90:
        span = _("%(n)s s") % {"n": seconds}
    elif seconds < 5400:
        span = _("%(n)s min") % {"n": round(seconds / 60)}
    elif seconds < 2 * 86400:
        span = _("%(n)s h") % {"n": round(seconds / 3600)}
    else:
        span = _("%(n)s days") % {"n": round(seconds / 86400)}
    local = timezone.localtime(moment)
    return _("%(at)s (in %(span)s)") % {"at": local.strftime("%Y-%m-%d %H:%M %Z"), "span": span}


def _usage(records: Any) -> tuple[int, Decimal]:
    totals = records.aggregate(p=Sum("prompt_tokens"), c=Sum("completion_tokens"),
                               cost=Sum("cost"))
    return (totals["p"] or 0) + (totals["c"] or 0), totals["cost"] or Decimal(0)


def _check_budget(budget: Budget, records: Any, who: str, now: datetime) -> str | None:
    """Raise when the budget is used up; return a warning text when close to it."""
    bounds = period_bounds(budget.period, now)
    tokens, cost = _usage(records.filter(started_at__gte=bounds.start,
                                         started_at__lt=bounds.end))
    period = budget.get_period_display()
    resets = _in_words(bounds.end, now)
    checks = []
    if budget.max_tokens is not None:
        checks.append((Decimal(tokens), Decimal(budget.max_tokens),
                       _("%(n)s tokens") % {"n": f"{budget.max_tokens:,}"}))
    if budget.max_cost is not None:
        checks.append((cost, budget.max_cost, f"{budget.max_cost:.2f}"))
    warning = None
    for used, limit, label in checks:
        if used >= limit:
            raise LimitExceeded(
                "budget_exceeded",
                _("%(who)s budget of %(limit)s %(period)s is used up; it resets at "
                  "%(resets)s.") % {"who": who, "limit": label, "period": period,
                                    "resets": resets},
                retry_after=int((bounds.end - now).total_seconds()))
        if limit and used * 100 >= limit * budget.warn_percent:
            warning = _("%(who)s budget %(period)s is %(pct)s%% used (%(limit)s); it resets at "
                        "%(resets)s.") % {"who": who, "period": period,
                                          "pct": int(used * 100 / limit), "limit": label,
                                          "resets": resets}
    return warning


def _answer_counts_query(user: int, since: datetime, minute_ago: datetime, stale: datetime
                         ) -> Any:
    in_minute = Q(started_at__gte=minute_ago)
    running = Q(started_at__gte=stale) & (
        Q(message__isnull=True, finished_at__isnull=True)
        | Q(message__status__in=["queued", "streaming"]))
    # Grouped by the one user it filters on: one row (or none), as a queryset that compiles.
    return (UsageRecord.objects.filter(user=user, purpose=UsageRecord.Purpose.ANSWER,
                                       started_at__gte=since)
            .values("user").annotate(recent=Count("pk", filter=in_minute),
                                     first=Min("started_at", filter=in_minute),
                                     running=Count("pk", filter=running))
            .values_list("recent", "first", "running").order_by())


# Every message's first statement under the lock: compiled once (chatsite/compiled.py).
_started = UsageRecord._meta.get_field("started_at")
_ANSWER_COUNTS = Compiled(_answer_counts_query, user=UsageRecord._meta.get_field("user"),
                          since=_started, minute_ago=_started, stale=_started)


def _answer_counts(user: Any, minute_ago: datetime, stale: datetime
                   ) -> tuple[int, datetime | None, int]:
    """(answers started in the last minute, the first of them, answers running now) in one
    statement: the rate and the concurrency limit read the same rows of the ledger.

    Rate and concurrency limits count answers; title calls (purpose "title") are the product's
    own and count only towards budgets. An answer of the web page counts as running while its
    message is active; an API answer while its record is open (recent ones only: a crashed
    process never holds a slot for long).
    """
    rows = _ANSWER_COUNTS.rows(user=user.pk, since=min(minute_ago, stale),
                               minute_ago=minute_ago, stale=stale)
    if not rows:
        return 0, None, 0
    recent, first, running = rows[0]
    return recent or 0, first, running or 0


def check_limits(user: Any, *, team_id: int | None = None, prompt_chars: int = 0,
                 now: datetime | None = None) -> list[str]:
    """Refuse a new answer that would break a limit (LimitExceeded); return warnings."""
    now = now or timezone.now()
    if prompt_chars > settings.MAX_PROMPT_CHARS:
        raise LimitExceeded("prompt_too_large", _(
            "This prompt has %(n)s characters; the limit is %(limit)s.") % {
            "n": f"{prompt_chars:,}", "limit": f"{settings.MAX_PROMPT_CHARS:,}"})
    stale = now - timedelta(seconds=settings.GENERATION_STALE_SECONDS * 4)
    recent, first_recent, running = _answer_counts(user, now - timedelta(seconds=60), stale)
    if recent >= settings.RATE_LIMIT_PER_MINUTE and first_recent is not None:
        resets = first_recent + timedelta(seconds=60)
        raise LimitExceeded("rate_limited", _(
            "You sent %(n)s messages in the last minute, the most allowed; you can send again "
            "at %(resets)s.") % {"n": settings.RATE_LIMIT_PER_MINUTE,
                                  "resets": _in_words(resets, now)},
            retry_after=max(1, int((resets - now).total_seconds())))
    if running >= settings.MAX_CONCURRENT_ANSWERS:
        raise LimitExceeded("too_many_answers", _(
            "You already have %(n)s answers being written, the most allowed at once. Wait for "
            "one to finish or stop it.") % {"n": running}, retry_after=5)
    return check_budgets(user, team_id=team_id, now=now)


# The budgets that apply, read before every answer: compiled once (chatsite/compiled.py).
_BUDGETS = Compiled(lambda user: Budget.objects.filter(enabled=True, user=user),
                    user=Budget._meta.get_field("user"))
_BUDGETS_WITH_TEAM = Compiled(
    lambda user, team: Budget.objects.filter(enabled=True).filter(Q(user=user) | Q(team=team)),
    user=Budget._meta.get_field("user"), team=Budget._meta.get_field("team"))


def check_budgets(user: Any, *, team_id: int | None = None,
                  now: datetime | None = None) -> list[str]:
    """The user's and the team's budgets over every ledger row, answers and titles alike:
    LimitExceeded when one is used up; the warnings of those nearly used up."""
    now = now or timezone.now()
    mine = UsageRecord.objects.filter(user=user)
    warnings = []
    budgets = (_BUDGETS_WITH_TEAM.objects(user=user.pk, team=team_id) if team_id
               else _BUDGETS.objects(user=user.pk))
    for budget in budgets:
        if budget.user_id:
            warning = _check_budget(budget, mine, _("Your"), now)
        else:
            warning = _check_budget(budget, UsageRecord.objects.filter(team_id=budget.team_id),
                                    _("The team's"), now)
        if warning:
            warnings.append(warning)
    return warnings


def lock_user(user: Any) -> None:
    """Serialise this user's answer starts, for the web page and `/v1` together (T22).

    Call it first in the transaction that checks the limits and writes the ledger row: the
    check and the row it guards become one step, so a burst of requests cannot all pass a
    limit that only one more may pass. PostgreSQL: a row lock on the user until commit. SQLite
    takes the database's write lock at BEGIN (IMMEDIATE transactions, chatsite/settings.py).
    """
    list(get_user_model().objects.select_for_update().filter(pk=user.pk)
         .values_list("pk", flat=True))


def record_start(user: Any, model: ModelConfig, *, team_id: int | None = None,
                 message: Any = None, source: str = UsageRecord.Source.WEB,
                 purpose: str = UsageRecord.Purpose.ANSWER,
                 conversation: Any = None) -> UsageRecord:
    """The ledger row of a call, opened when it starts: an answer (with its message on the web
    page) or a title (with its conversation)."""
    if conversation is None and message is not None:
        conversation = message.conversation
    return UsageRecord.objects.create(user=user, model=model, team_id=team_id, message=message,
                                      source=source, currency=model.currency, purpose=purpose,
                                      conversation=conversation)


def record_finish(record: UsageRecord | int, *, status: str, model: ModelConfig,
                  prompt_tokens: int | None, completion_tokens: int | None,
                  request_id: str = "", ttft_ms: int | None = None,
                  duration_ms: int | None = None, error_code: str = "") -> None:
    pk = record.pk if isinstance(record, UsageRecord) else record
    UsageRecord.objects.filter(pk=pk).update(
        finished_at=timezone.now(), status=status, prompt_tokens=prompt_tokens or 0,
        completion_tokens=completion_tokens or 0,
        cost=model.cost(prompt_tokens, completion_tokens), request_id=request_id[:120],
        ttft_ms=ttft_ms, duration_ms=duration_ms, error_code=error_code[:40])

