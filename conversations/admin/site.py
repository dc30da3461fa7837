"""The operations console: users, teams, budgets, usage, tokens, share links, audit log, reports.

Providers and models live in providers/admin.py. Secrets never reach a page here: API tokens
show their public prefix only (never the digest), share links a few characters of the token.
Views of our ModelAdmins run inside `audit.acting(request)`, so the changes they save are
recorded with the admin who made them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet, Sum
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext_lazy as _

from conversations import audit
from conversations.api import tokens
from conversations.models import (
    ApiToken,
    AuditEvent,
    Budget,
    Conversation,
    Message,
    ShareLink,
    TeamSettings,
    UsageRecord,
)
from conversations.sharing.links import revoke_share
from conversations.usage import reports
from conversations.usage.accounting import period_bounds
from providers.models import ModelConfig

User = get_user_model()


class AuditedAdmin(admin.ModelAdmin):
    """Saves made through these pages are audited with the acting admin and address."""

    def changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        with audit.acting(request):
            return super().changeform_view(request, *args, **kwargs)

    def changelist_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        with audit.acting(request):  # bulk actions and list_editable saves run in here
            return super().changelist_view(request, *args, **kwargs)

    def delete_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        with audit.acting(request):
            return super().delete_view(request, *args, **kwargs)


class ReadOnlyAdmin(AuditedAdmin):
    """A ledger or log: listed and viewed, never added to, edited or deleted here."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def may_change(self, request: HttpRequest) -> bool:
        """The model's real change permission, which guards the revoke actions."""
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")


# --- users and teams --------------------------------------------------------------------------
ROLE_FIELDS = ("is_staff", "is_superuser", "groups", "user_permissions")

if admin.site.is_registered(User):
    admin.site.unregister(User)
if admin.site.is_registered(Group):
    admin.site.unregister(Group)


@admin.register(User)
class UserAdmin(AuditedAdmin, DjangoUserAdmin):
    list_display = ("username", "email", "first_name", "last_name", "is_active", "is_staff",
                    "is_superuser", "team_names", "last_login")
    list_filter = ("is_active", "is_staff", "is_superuser", "groups")
    actions = ["activate_users", "deactivate_users"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).prefetch_related("groups")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # Roles and membership are a superuser's to give: a staff member allowed to edit users
        # must not be able to raise anyone, themselves included (threat T17).
        readonly = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            readonly += [name for name in ROLE_FIELDS if name not in readonly]
        return readonly

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False  # else a staff member could take over a superuser's account
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_delete_permission(request, obj)

    @admin.display(description=_("teams"))
    def team_names(self, obj: Any) -> str:
        return ", ".join(sorted(group.name for group in obj.groups.all())) or "-"

    @admin.action(description=_("Activate selected users"), permissions=["change"])
    def activate_users(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        changed = self._set_active(request, queryset, True)
        self.message_user(request, _("%(n)s user(s) activated.") % {"n": changed},
                          messages.SUCCESS)

    @admin.action(description=_("Deactivate selected users"), permissions=["change"])
    def deactivate_users(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        if queryset.filter(pk=request.user.pk).exists():
            self.message_user(request, _("You cannot deactivate your own account."),
                              messages.WARNING)
        changed = self._set_active(request, queryset.exclude(pk=request.user.pk), False)
        self.message_user(request, _("%(n)s user(s) deactivated; their open pages lose access "
                                     "at once.") % {"n": changed}, messages.SUCCESS)

    def _set_active(self, request: HttpRequest, queryset: QuerySet[Any], active: bool) -> int:
        changed = 0
        for user in queryset.filter(is_active=not active):
            if user.is_superuser and not request.user.is_superuser:
                continue
            user.is_active = active
            # save(), not update(): the audit and the socket push listen to post_save.
            user.save(update_fields=["is_active"])
            changed += 1
        return changed


class TeamSettingsInline(admin.StackedInline):
    model = TeamSettings
    can_delete = False
    max_num = 1
    extra = 1  # no row yet means the defaults; an untouched form saves none
    verbose_name_plural = _("team settings")


@admin.register(Group)
class TeamAdmin(AuditedAdmin, DjangoGroupAdmin):
    list_display = ("name", "member_count")
    inlines = [TeamSettingsInline]
    readonly_fields = ("member_list",)
    fields = ("name", "member_list", "permissions")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Group]:
        return super().get_queryset(request).annotate(members=Count("user", distinct=True))

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        readonly = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            readonly.append("permissions")  # a team's permissions pass to all its members
        return readonly

    @admin.display(description=_("members"), ordering="members")
    def member_count(self, obj: Group) -> int:
        return getattr(obj, "members", 0)

    @admin.display(description=_("members"))
    def member_list(self, obj: Group) -> str:
        if obj.pk is None:
            return "-"
        members = obj.user_set.order_by("username")
        rows = ((reverse("admin:auth_user_change", args=[user.pk]), user.get_username())
                for user in members)
        links = format_html_join(", ", '<a href="{}">{}</a>', rows)
        hint = _("Add or remove members on each user's page (field “groups”).")
        return format_html("{}<p class=\"help\">{}</p>", links or "-", hint)


# --- conversations ----------------------------------------------------------------------------
class MessageInline(admin.TabularInline):
    model = Message
    fk_name = "conversation"
    fields = ("seq", "role", "author", "status", "model", "content", "created_at")
    readonly_fields = fields
    ordering = ("seq",)
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(AuditedAdmin):
    """Listed for oversight; opening one that is not yours is recorded in the audit log."""

    list_display = ("display_title", "owner", "team", "model", "archived", "updated_at")
    list_filter = ("archived", "team", "model")
    search_fields = ("title", "owner__username")
    list_select_related = ("owner", "team", "model")
    fields = ("title", "owner", "team", "model", "system_prompt", "params", "pinned",
              "archived", "created_at", "updated_at", "open_in_chat")
    readonly_fields = fields
    inlines = [MessageInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # read-only: conversations are changed by their owners only

    @admin.display(description=_("title"), ordering="title")
    def display_title(self, obj: Conversation) -> str:
        return obj.display_title

    @admin.display(description=_("open"))
    def open_in_chat(self, obj: Conversation) -> str:
        return format_html('<a href="{}">{}</a>', reverse("conversation", args=[obj.pk]),
                           _("Open in the chat (read-only for admins, audited)"))

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> Any:
        response = super().change_view(request, object_id, form_url, extra_context)
        if request.method == "GET" and response.status_code == 200:
            conversation = self.get_object(request, unquote(object_id))
            if conversation is not None and conversation.owner_id != request.user.pk:
                audit.record(audit.ADMIN_OPENED_CONVERSATION, actor=request.user,
                             request=request, target=audit.target_of(conversation),
                             details={"owner": conversation.owner.get_username(),
                                      "via": "admin"})
        return response


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
        return f"{tokens:,} tokens, {sums['cost'] or 0:.4f}"


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "user", "team", "model", "source", "status", "prompt_tokens",
                    "completion_tokens", "cost", "currency", "ttft_ms", "duration_ms")
    list_filter = ("source", "status", "model", "team", ("started_at", admin.DateFieldListFilter))
    search_fields = ("user__username", "request_id")
    date_hierarchy = "started_at"
    list_select_related = ("user", "team", "model")


# --- API tokens and share links ---------------------------------------------------------------
class RevokedFilter(admin.SimpleListFilter):
    title = _("state")
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("active", _("active")), ("revoked", _("revoked"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    # `digest` is never listed, shown or searchable: only the public prefix tells tokens apart.
    list_display = ("name", "user", "prefix_hint", "created_at", "last_used_at", "active")
    list_filter = (RevokedFilter,)
    search_fields = ("name", "user__username", "prefix")
    fields = ("name", "user", "prefix_hint", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    list_select_related = ("user",)
    actions = ["revoke"]

    @admin.display(description=_("prefix"))
    def prefix_hint(self, obj: ApiToken) -> str:
        return f"{obj.prefix}…"

    @admin.display(description=_("active"), boolean=True)
    def active(self, obj: ApiToken) -> bool:
        return obj.revoked_at is None

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return self.may_change(request)

    @admin.action(description=_("Revoke selected tokens"), permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        count = 0
        for token in queryset.filter(revoked_at__isnull=True).select_related("user"):
            count += tokens.revoke(token, actor=request.user, request=request)  # audits too
        self.message_user(request, _("%(n)s token(s) revoked.") % {"n": count},
                          messages.SUCCESS)


class ShareStateFilter(admin.SimpleListFilter):
    title = _("state")
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("valid", _("valid")), ("expired", _("expired")), ("revoked", _("revoked"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        now = timezone.now()
        if self.value() == "valid":
            return queryset.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now),
                                   revoked_at__isnull=True)
        if self.value() == "expired":
            return queryset.filter(expires_at__lte=now, revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ShareLink)
class ShareLinkAdmin(ReadOnlyAdmin):
    list_display = ("link_hint", "conversation", "created_by", "created_at", "expires_at",
                    "state", "live", "anonymous")
    list_filter = (ShareStateFilter, "live", "anonymous")
    search_fields = ("conversation__title", "created_by__username")
    fields = ("link_hint", "conversation", "created_by", "created_at", "expires_at",
              "revoked_at", "live", "anonymous", "upto_seq")
    readonly_fields = fields
    list_select_related = ("conversation", "created_by")
    actions = ["revoke"]

    @admin.display(description=_("link"))
    def link_hint(self, obj: ShareLink) -> str:
        return f"/s/{obj.token[:6]}…"  # enough to tell links apart, too little to open one

    @admin.display(description=_("state"))
    def state(self, obj: ShareLink) -> str:
        if obj.revoked_at is not None:
            return str(_("revoked"))
        return str(_("valid")) if obj.is_valid() else str(_("expired"))

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return self.may_change(request)

    @admin.action(description=_("Revoke selected links"), permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ShareLink]) -> None:
        count = 0
        for share in queryset.filter(revoked_at__isnull=True):
            if not revoke_share(share, request.user):
                continue  # revoked meanwhile by someone else
            count += 1
            # revoke_share updates with a queryset (no post_save): record it unless it did.
            recorded = AuditEvent.objects.filter(action=audit.SHARE_REVOKED,
                                                 target=audit.target_of(share)).exists()
            if not recorded:
                audit.record_share_revoked(share, actor=request.user, request=request)
        self.message_user(request, _("%(n)s link(s) revoked; open pages lost them at once.")
                          % {"n": count}, messages.SUCCESS)


# --- the audit log ----------------------------------------------------------------------------
@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("at", "action", "actor", "target", "ip", "details_summary")
    list_filter = ("action", ("at", admin.DateFieldListFilter))
    search_fields = ("action", "target", "actor__username", "ip")
    date_hierarchy = "at"
    list_select_related = ("actor",)
    fields = ("at", "action", "actor", "target", "ip", "details_pretty")
    readonly_fields = fields

    @admin.display(description=_("details"))
    def details_summary(self, obj: AuditEvent) -> str:
        text = json.dumps(obj.details, ensure_ascii=False, sort_keys=True)
        return text if len(text) <= 120 else text[:119] + "…"

    @admin.display(description=_("details"))
    def details_pretty(self, obj: AuditEvent) -> str:
        text = json.dumps(obj.details, ensure_ascii=False, sort_keys=True, indent=2)
        return format_html("<pre>{}</pre>", text)


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
