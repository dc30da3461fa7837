"""Usage reports over the accounting ledger (UsageRecord): tables, CSV and a plain SVG chart.

Rows are grouped by a dimension (user, team, model or day) and by currency, since costs in
different currencies cannot be added. Days are calendar days in the site's time zone.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from html import escape
from typing import Any

from django.db.models import Count, F, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone
from django.utils.translation import gettext as _

from conversations.models import UsageRecord

DIMENSIONS = ("user", "team", "model", "day")
METRICS = ("tokens", "cost")
MAX_CHART_DAYS = 366
# The label columns of each dimension, as values() paths.
_GROUP_FIELDS: dict[str, tuple[str, ...]] = {
    "user": ("user_id", "user__username"),
    "team": ("team_id", "team__name"),
    "model": ("model_id", "model__display_name"),
    "day": ("day",),
}


@dataclass(frozen=True)
class UsageFilters:
    date_from: date | None = None
    date_to: date | None = None  # inclusive
    user_id: int | None = None
    team_id: int | None = None
    model_id: int | None = None
    source: str = ""


@dataclass(frozen=True)
class UsageRow:
    key: str
    label: str
    currency: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class UsageReport:
    dimension: str
    rows: list[UsageRow]
    totals: list[UsageRow]  # one per currency
    days: list[tuple[date, int, Decimal]] = field(default_factory=list)  # day, tokens, cost


def _day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min), timezone.get_current_timezone())


def filtered(filters: UsageFilters) -> QuerySet[UsageRecord]:
    qs = UsageRecord.objects.all()
    if filters.date_from:
        qs = qs.filter(started_at__gte=_day_start(filters.date_from))
    if filters.date_to:
        qs = qs.filter(started_at__lt=_day_start(filters.date_to + timedelta(days=1)))
    if filters.user_id:
        qs = qs.filter(user_id=filters.user_id)
    if filters.team_id:
        qs = qs.filter(team_id=filters.team_id)
    if filters.model_id:
        qs = qs.filter(model_id=filters.model_id)
    if filters.source:
        qs = qs.filter(source=filters.source)
    return qs


def _with_day(qs: QuerySet[UsageRecord]) -> Any:  # a queryset with a `day` column
    return qs.annotate(day=TruncDate("started_at", tzinfo=timezone.get_current_timezone()))


def _sums(qs: Any) -> Any:
    return qs.annotate(requests=Count("id"), prompt=Sum("prompt_tokens"),
                       completion=Sum("completion_tokens"), total_cost=Sum("cost"))


def _label(dimension: str, values: dict[str, Any]) -> tuple[str, str]:
    if dimension == "day":
        return values["day"].isoformat(), values["day"].isoformat()
    key_field, label_field = _GROUP_FIELDS[dimension]
    key = values[key_field]
    if key is None:
        return "", {"user": _("(deleted user)"), "team": _("(no team)")}.get(dimension, "-")
    return str(key), str(values[label_field])


def _row(key: str, label: str, values: dict[str, Any]) -> UsageRow:
    return UsageRow(key=key, label=label, currency=values["currency"],
                    requests=values["requests"], prompt_tokens=values["prompt"] or 0,
                    completion_tokens=values["completion"] or 0,
                    cost=values["total_cost"] or Decimal(0))


def aggregate(filters: UsageFilters, dimension: str) -> UsageReport:
    """Totals per `dimension` value and currency, grand totals per currency, and per-day sums."""
    if dimension not in DIMENSIONS:
        raise ValueError(f"unknown dimension {dimension!r}")
    qs = _with_day(filtered(filters))
    grouped = _sums(qs.values(*_GROUP_FIELDS[dimension], "currency")).order_by()
    rows = [_row(*_label(dimension, values), values) for values in grouped]
    if dimension == "day":
        rows.sort(key=lambda r: (r.key, r.currency))
    else:
        rows.sort(key=lambda r: (-r.total_tokens, r.label.lower(), r.currency))
    totals = [_row("", _("Total"), values)
              for values in _sums(qs.values("currency")).order_by("currency")]
    report = UsageReport(dimension=dimension, rows=rows, totals=totals)
    report.days = _per_day(qs, filters, main_currency(report))
    return report


def main_currency(report: UsageReport) -> str:
    """The currency with the largest spend: the one a cost chart can show."""
    if not report.totals:
        return ""
    return max(report.totals, key=lambda t: (t.cost, t.currency)).currency


def _per_day(qs: Any, filters: UsageFilters,
             currency: str) -> list[tuple[date, int, Decimal]]:
    """Every day from the first to the last (filter bounds, else data), zeros included."""
    tokens = {v["day"]: v["tokens"] or 0 for v in qs.values("day").order_by()
              .annotate(tokens=Sum(F("prompt_tokens") + F("completion_tokens")))}
    costs = {v["day"]: v["spend"] or Decimal(0) for v in qs.filter(currency=currency)
             .values("day").order_by().annotate(spend=Sum("cost"))}
    known = sorted(tokens)
    first = filters.date_from or (known[0] if known else None)
    last = filters.date_to or (known[-1] if known else None)
    if first is None or last is None or last < first:
        return []
    last = min(last, first + timedelta(days=MAX_CHART_DAYS - 1))
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    return [(day, tokens.get(day, 0), costs.get(day, Decimal(0))) for day in days]


# --- CSV --------------------------------------------------------------------------------------
CSV_HEADER = ["dimension", "key", "label", "currency", "requests", "prompt_tokens",
              "completion_tokens", "total_tokens", "cost"]


def _cell(text: str) -> str:
    # A spreadsheet would run a cell starting like a formula (a user may be named "=cmd|...").
    return "'" + text if text[:1] in {"=", "+", "-", "@", "\t", "\r"} else text


def to_csv(report: UsageReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    labelled = [(report.dimension, row) for row in report.rows]
    for dimension, row in [*labelled, *(("total", row) for row in report.totals)]:
        writer.writerow([dimension, row.key, _cell(row.label), row.currency, row.requests,
                         row.prompt_tokens, row.completion_tokens, row.total_tokens,
                         f"{row.cost:.8f}"])
    return out.getvalue()


# --- SVG chart --------------------------------------------------------------------------------
CHART_WIDTH = 720
CHART_HEIGHT = 260
_PAD_LEFT, _PAD_RIGHT, _PAD_TOP, _PAD_BOTTOM = 64, 16, 36, 44


def _fmt(value: float, metric: str) -> str:
    return f"{value:,.4f}".rstrip("0").rstrip(".") if metric == "cost" else f"{value:,.0f}"


def svg_bar_chart(points: Sequence[tuple[str, float]], *, title: str, metric: str,
                  unit: str = "") -> str:
    """One bar per point; every text is XML-escaped, so labels may come from users."""
    width, height = CHART_WIDTH, CHART_HEIGHT
    plot_w = width - _PAD_LEFT - _PAD_RIGHT
    plot_h = height - _PAD_TOP - _PAD_BOTTOM
    top = max((value for _label, value in points), default=0.0) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="usage-chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{_PAD_LEFT}" y="20" font-size="14" font-weight="bold" '
        f'fill="currentColor">{escape(title)}</text>',
        f'<line x1="{_PAD_LEFT}" y1="{_PAD_TOP + plot_h}" x2="{width - _PAD_RIGHT}" '
        f'y2="{_PAD_TOP + plot_h}" stroke="#888"/>',
        f'<text x="{_PAD_LEFT - 6}" y="{_PAD_TOP + 4}" font-size="11" text-anchor="end" '
        f'fill="currentColor">{escape(_fmt(top, metric))}</text>',
        f'<text x="{_PAD_LEFT - 6}" y="{_PAD_TOP + plot_h}" font-size="11" text-anchor="end" '
        f'fill="currentColor">0</text>',
    ]
    if unit:
        parts.append(f'<text x="{_PAD_LEFT - 6}" y="{_PAD_TOP - 10}" font-size="11" '
                     f'text-anchor="end" fill="currentColor">{escape(unit)}</text>')
    if not points:
        parts.append(f'<text x="{width // 2}" y="{height // 2}" text-anchor="middle" '
                     f'fill="currentColor">{escape(_("No usage in this range."))}</text>')
    slot = plot_w / max(len(points), 1)
    bar_w = max(slot * 0.7, 1.0)
    every = max(1, len(points) // 12)  # at most about a dozen axis labels
    for index, (label, value) in enumerate(points):
        bar_h = plot_h * (value / top) if value > 0 else 0.0
        x = _PAD_LEFT + index * slot + (slot - bar_w) / 2
        y = _PAD_TOP + plot_h - bar_h
        tip = f"{label}: {_fmt(value, metric)}{' ' + unit if unit else ''}"
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                     f'height="{bar_h:.1f}" fill="#4f6bed"><title>{escape(tip)}</title></rect>')
        if index % every == 0:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{_PAD_TOP + plot_h + 16}" '
                         f'font-size="10" text-anchor="middle" fill="currentColor">'
                         f"{escape(label)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def chart(report: UsageReport, metric: str, subject: str = "") -> str:
    """The per-day chart of a report: tokens, or cost in its main currency."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    if metric == "cost":
        unit = main_currency(report)
        points = [(day.isoformat(), float(cost)) for day, _tokens, cost in report.days]
        title = _("Cost per day")
    else:
        unit = _("tokens")
        points = [(day.isoformat(), float(tokens)) for day, tokens, _cost in report.days]
        title = _("Tokens per day")
    if subject:
        title = f"{title} — {subject}"
    return svg_bar_chart(points, title=title, metric=metric, unit=unit)
