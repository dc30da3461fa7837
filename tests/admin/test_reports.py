"""Usage reports: sums by user, team, model and day; filters; CSV; the server-side SVG chart."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.utils import timezone

from conversations.models import UsageRecord
from conversations.usage import reports
from conversations.usage.reports import UsageFilters
from providers.models import ModelConfig

pytestmark = pytest.mark.django_db

DAY1, DAY2, DAY3 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)


@dataclass(frozen=True)
class Use:
    user: str
    team: str
    model: int  # index into the two models
    day: date
    prompt: int
    completion: int
    cost: str
    source: str = "web"


LEDGER = [
    Use("alice", "red", 0, DAY1, 100, 50, "0.0010"),
    Use("bob", "red", 1, DAY1, 200, 100, "0.0020"),
    Use("alice", "red", 0, DAY2, 10, 5, "0.0001"),
    Use("charlie", "blue", 1, DAY2, 300, 150, "0.0030"),
    Use("charlie", "blue", 1, DAY2, 1, 1, "0.00001", source="api"),
    Use("bob", "blue", 0, DAY3, 1000, 500, "0.0100"),
]


@pytest.fixture
def ledger(owner: Any, member: Any, outsider: Any) -> dict[str, Any]:
    users = {"alice": owner, "bob": member, "charlie": outsider}
    teams = {name: Group.objects.create(name=name) for name in ("red", "blue")}
    models = list(ModelConfig.objects.order_by("pk")[:2])
    for use in LEDGER:
        record = UsageRecord.objects.create(
            user=users[use.user], team=teams[use.team], model=models[use.model],
            source=use.source, status="complete", prompt_tokens=use.prompt,
            completion_tokens=use.completion, cost=Decimal(use.cost))
        noon = timezone.make_aware(datetime.combine(use.day, time(12)),
                                   timezone.get_current_timezone())
        UsageRecord.objects.filter(pk=record.pk).update(started_at=noon)
    return {"users": users, "teams": teams, "models": models}


def expected(key: Any, uses: list[Use] = LEDGER) -> dict[Any, tuple[int, int, int, Decimal]]:
    """requests, prompt, completion and cost per key, summed by hand from LEDGER."""
    sums: dict[Any, tuple[int, int, int, Decimal]] = {}
    for use in uses:
        n, p, c, cost = sums.get(key(use), (0, 0, 0, Decimal(0)))
        sums[key(use)] = (n + 1, p + use.prompt, c + use.completion, cost + Decimal(use.cost))
    return sums


def table(report: reports.UsageReport) -> dict[str, tuple[int, int, int, Decimal]]:
    return {row.label: (row.requests, row.prompt_tokens, row.completion_tokens, row.cost)
            for row in report.rows}


def test_usage_by_user(ledger: dict[str, Any]) -> None:
    report = reports.aggregate(UsageFilters(), "user")
    assert table(report) == expected(lambda u: u.user)
    assert [row.label for row in report.rows] == ["bob", "charlie", "alice"]  # most tokens first


def test_usage_by_team_and_by_model(ledger: dict[str, Any]) -> None:
    assert table(reports.aggregate(UsageFilters(), "team")) == expected(lambda u: u.team)
    names = [m.display_name for m in ledger["models"]]
    assert table(reports.aggregate(UsageFilters(), "model")) == expected(
        lambda u: names[u.model])


def test_usage_by_day_with_totals(ledger: dict[str, Any]) -> None:
    report = reports.aggregate(UsageFilters(), "day")
    assert table(report) == expected(lambda u: u.day.isoformat())
    (total,) = report.totals
    assert (total.requests, total.prompt_tokens, total.completion_tokens, total.cost) == \
        expected(lambda u: "all")["all"]
    assert total.total_tokens == 2417
    assert [(day, tokens) for day, tokens, _cost in report.days] == [
        (DAY1, 450), (DAY2, 467), (DAY3, 1500)]


def test_filters_narrow_the_ledger(ledger: dict[str, Any]) -> None:
    users, teams, models = ledger["users"], ledger["teams"], ledger["models"]
    only_day2 = reports.aggregate(UsageFilters(date_from=DAY2, date_to=DAY2), "user")
    assert table(only_day2) == expected(lambda u: u.user, [u for u in LEDGER if u.day == DAY2])
    from_day2 = reports.aggregate(UsageFilters(date_from=DAY2), "day")
    assert [row.key for row in from_day2.rows] == ["2026-03-02", "2026-03-03"]
    bob = reports.aggregate(UsageFilters(user_id=users["bob"].pk), "team")
    assert table(bob) == expected(lambda u: u.team, [u for u in LEDGER if u.user == "bob"])
    blue = reports.aggregate(UsageFilters(team_id=teams["blue"].pk), "user")
    assert table(blue) == expected(lambda u: u.user, [u for u in LEDGER if u.team == "blue"])
    second = reports.aggregate(UsageFilters(model_id=models[1].pk), "day")
    assert table(second) == expected(lambda u: u.day.isoformat(),
                                     [u for u in LEDGER if u.model == 1])
    api = reports.aggregate(UsageFilters(source="api"), "user")
    assert table(api) == {"charlie": (1, 1, 1, Decimal("0.00001"))}


def test_costs_in_different_currencies_are_never_added(ledger: dict[str, Any]) -> None:
    UsageRecord.objects.filter(user__username="bob").update(currency="CNY")
    report = reports.aggregate(UsageFilters(), "user")
    assert {(t.currency, t.cost) for t in report.totals} == {
        ("CNY", Decimal("0.0120")), ("USD", Decimal("0.00411"))}
    assert reports.main_currency(report) == "CNY"


def test_csv_has_a_row_per_value_and_the_totals(ledger: dict[str, Any]) -> None:
    report = reports.aggregate(UsageFilters(), "model")
    rows = list(csv.reader(io.StringIO(reports.to_csv(report))))
    assert rows[0] == reports.CSV_HEADER
    assert len(rows) == 1 + 2 + 1
    assert rows[-1][:1] == ["total"] and rows[-1][4:8] == ["6", "1611", "806", "2417"]
    assert Decimal(rows[-1][8]) == Decimal("0.01611")
    by_label = {row[2]: row for row in rows[1:-1]}
    first = ledger["models"][0].display_name
    assert by_label[first][4:8] == ["3", "1110", "555", "1665"]


def test_csv_defuses_names_a_spreadsheet_would_run(ledger: dict[str, Any]) -> None:
    bob = ledger["users"]["bob"]
    bob.username = "=HYPERLINK(\"http://evil.test\")"
    bob.save()
    text = reports.to_csv(reports.aggregate(UsageFilters(), "user"))
    assert "'=HYPERLINK" in text
    assert not any(line.startswith("user,") and ",=" in line for line in text.splitlines())


def bars(svg: str) -> int:
    return len(re.findall(r'<rect class="bar"', svg))


def test_the_chart_has_one_bar_per_day_zero_days_included(ledger: dict[str, Any]) -> None:
    report = reports.aggregate(UsageFilters(), "day")
    svg = reports.chart(report, "tokens")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert bars(svg) == 3
    wider = reports.aggregate(UsageFilters(date_from=date(2026, 2, 28),
                                           date_to=date(2026, 3, 4)), "day")
    assert bars(reports.chart(wider, "cost")) == 5
    assert "<script" not in svg


def test_the_chart_escapes_names(ledger: dict[str, Any]) -> None:
    svg = reports.svg_bar_chart([("<b>day</b>", 3.0)], title='<script>alert("x")</script>',
                                metric="tokens", unit="&tokens")
    assert "<script>" not in svg and "<b>" not in svg
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in svg
    assert "&amp;tokens" in svg


# --- the admin page ------------------------------------------------------------------------------
REPORT = "/admin/reports/usage/"


def test_the_report_page_shows_table_chart_and_totals(admin_client: Client,
                                                      ledger: dict[str, Any]) -> None:
    response = admin_client.get(REPORT, {"group_by": "team"})
    assert response.status_code == 200
    body = response.content.decode()
    assert body.count('<rect class="bar"') == 3
    assert body.count('class="usage-chart"') == 1
    assert "red" in body and "blue" in body and "2417" in body


def test_the_report_page_escapes_a_user_named_like_a_script(admin_client: Client,
                                                            ledger: dict[str, Any]) -> None:
    bob = ledger["users"]["bob"]
    bob.username = "<script>alert(1)</script>"
    bob.save()
    response = admin_client.get(REPORT, {"user": bob.pk, "group_by": "user"})
    body = response.content.decode()
    assert "<script>alert(1)</script>" not in body
    start = body.index('<svg xmlns="http://www.w3.org/2000/svg" class="usage-chart"')
    svg = body[start:body.index("</svg>", start)]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in svg
    # Bob used the site on days 1 and 3: day 2 is there too, as an empty bar.
    assert svg.count('<rect class="bar"') == 3 and svg.count('height="0.0"') == 1
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body[body.index('id="usage-table"'):]


def test_the_report_exports_csv_with_the_same_filters(admin_client: Client,
                                                      ledger: dict[str, Any]) -> None:
    response = admin_client.get(REPORT, {"group_by": "day", "source": "api", "export": "csv"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == 'attachment; filename="usage-by-day.csv"'
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert [row[1] for row in rows[1:]] == ["2026-03-02", ""]


def test_a_bad_filter_shows_an_error_not_a_crash(admin_client: Client,
                                                 ledger: dict[str, Any]) -> None:
    response = admin_client.get(REPORT, {"date_from": "not-a-date", "group_by": "planet"})
    assert response.status_code == 200
    assert 'id="usage-table"' not in response.content.decode()


def test_the_report_needs_the_usage_view_permission(client: Client, member: Any,
                                                    ledger: dict[str, Any]) -> None:
    client.force_login(member)
    assert client.get(REPORT)["Location"].startswith("/admin/login/")
    member.is_staff = True
    member.save()
    assert client.get(REPORT).status_code == 403
    member.user_permissions.add(Permission.objects.get(codename="view_usagerecord"))
    assert client.get(REPORT).status_code == 200
