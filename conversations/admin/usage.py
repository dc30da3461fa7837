"""Budgets, the usage ledger, and the usage report page with its CSV export."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path
from django.utils.safestring import mark_safe
from django.utils.translation import gettext_lazy as _

from conversations.admin.base import AuditedAdmin, ReadOnlyAdmin
from conversations.models import (
    Budget,
    MessageStatus,
    UsageRecord,
)
from conversations.usage import reports
from conversations.usage.accounting import period_bounds
from providers.models import ModelConfig

User = get_user_model()


# --- budgets and usage ------------------------------------------------------------------------
class BudgetForm(forms.ModelForm):
    class Meta:
        model = Budget
        fields = ["user", "team", "period", "max_tokens", "max_cost", "warn_percent", "enabled"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if bool(data.get("user")) == bool(data.get("team")):
            raise forms.ValidationError(_("A budget belongs to one user or one team: choose "
                                          "exactly one."))
        return data


@admin.register(Budget)
class BudgetAdmin(AuditedAdmin):
    form = BudgetForm
    list_display = ("__str__", "period", "max_tokens", "max_cost", "warn_percent", "enabled",
                    "used_this_period")
    list_filter = ("period", "enabled")
    search_fields = ("user__username", "team__name")
    autocomplete_fields = ("user", "team")
    list_select_related = ("user", "team")

    @admin.display(description=_("used this period"))
    def used_this_period(self, obj: Budget) -> str:
        bounds = period_bounds(obj.period)
        records = UsageRecord.objects.filter(started_at__gte=bounds.start,
                                             started_at__lt=bounds.end)
        records = records.filter(user_id=obj.user_id) if obj.user_id else records.filter(
            team_id=obj.team_id)
        sums = records.aggregate(p=Sum("prompt_tokens"), c=Sum("completion_tokens"),
                                 cost=Sum("cost"))
        tokens = (sums["p"] or 0) + (sums["c"] or 0)
        return _("%(tokens)s tokens, %(cost)s") % {"tokens": f"{tokens:,}",
                                                   "cost": f"{sums['cost'] or 0:.4f}"}


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "user", "team", "model", "source", "purpose", "status_label",
                    "prompt_tokens", "completion_tokens", "cost", "currency", "ttft_ms",
                    "duration_ms")
    list_filter = ("source", "purpose", "status", "model", "team",
                   ("started_at", admin.DateFieldListFilter))
    search_fields = ("user__username", "request_id")
    date_hierarchy = "started_at"
    list_select_related = ("user", "team", "model")

    @admin.display(description=_("status"), ordering="status")
    def status_label(self, obj: UsageRecord) -> str:
        if obj.status == "running":
            return str(_("running"))
        try:
            return str(MessageStatus(obj.status).label)
        except ValueError:
            return obj.status




# --- reports ----------------------------------------------------------------------------------
class UsageReportForm(forms.Form):
    date_from = forms.DateField(label=_("from"), required=False,
                                widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(label=_("to"), required=False,
                              widget=forms.DateInput(attrs={"type": "date"}))
    user = forms.ModelChoiceField(User.objects.order_by("username"), required=False,
                                  label=_("user"))
    team = forms.ModelChoiceField(Group.objects.order_by("name"), required=False,
                                  label=_("team"))
    model = forms.ModelChoiceField(ModelConfig.objects.all(), required=False, label=_("model"))
    source = forms.ChoiceField(choices=[("", _("all")), *UsageRecord.Source.choices],
                               required=False, label=_("source"))
    group_by = forms.ChoiceField(choices=[("user", _("user")), ("team", _("team")),
                                          ("model", _("model")), ("day", _("day"))],
                                 required=False, label=_("group by"))
    metric = forms.ChoiceField(choices=[("tokens", _("tokens")), ("cost", _("cost"))],
                               required=False, label=_("chart"))

    def filters(self) -> reports.UsageFilters:
        data = self.cleaned_data
        return reports.UsageFilters(
            date_from=data.get("date_from"), date_to=data.get("date_to"),
            user_id=data["user"].pk if data.get("user") else None,
            team_id=data["team"].pk if data.get("team") else None,
            model_id=data["model"].pk if data.get("model") else None,
            source=data.get("source") or "")

    def subject(self) -> str:
        """Who and what the chart covers, for its title (user-chosen names: escaped there)."""
        data = self.cleaned_data
        parts = [str(data[name]) for name in ("user", "team", "model") if data.get(name)]
        if data.get("source"):
            parts.append(str(data["source"]))
        return " · ".join(parts)


def usage_report(request: HttpRequest) -> HttpResponse:
    if not request.user.has_perm("conversations.view_usagerecord"):
        raise PermissionDenied
    form = UsageReportForm(request.GET)
    report, chart = None, ""
    if form.is_valid():
        dimension = form.cleaned_data.get("group_by") or "day"
        report = reports.aggregate(form.filters(), dimension)
        if request.GET.get("export") == "csv":
            response = HttpResponse(reports.to_csv(report), content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="usage-by-{dimension}.csv"'
            return response
        # Built by reports.svg_bar_chart, which escapes every text it writes.
        chart = mark_safe(reports.chart(report, form.cleaned_data.get("metric") or "tokens",
                                        form.subject()))
    query = request.GET.copy()
    query["export"] = "csv"
    context = {
        **admin.site.each_context(request),
        "title": _("Usage report"),
        "form": form,
        "report": report,
        "dimension_label": dict(form.fields["group_by"].choices).get(  # type: ignore[attr-defined]
            form.cleaned_data.get("group_by") or "day", "") if report else "",
        "chart": chart,
        "csv_query": query.urlencode(),
    }
    return TemplateResponse(request, "admin/reports/usage.html", context)


def _with_report_urls(
    site_urls: Callable[[], list[URLPattern | URLResolver]],
) -> Callable[[], list[URLPattern | URLResolver]]:
    def get_urls() -> list[URLPattern | URLResolver]:
        report = path("reports/usage/", admin.site.admin_view(usage_report),
                      name="reports_usage")
        return [report, *site_urls()]

    get_urls.with_reports = True  # type: ignore[attr-defined]
    return get_urls


admin.site.site_header = _("Llama Chat operations")
admin.site.site_title = _("Llama Chat admin")

# The site's own URLs end with a catch-all, so the report goes first. Done on the default site
# object (URLs are read from it after every admin module is loaded), not through chatsite/urls.
if not getattr(admin.site.get_urls, "with_reports", False):
    admin.site.get_urls = _with_report_urls(admin.site.get_urls)  # type: ignore[method-assign]
