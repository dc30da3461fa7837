"""API tokens and share links: public prefixes only, never a digest or a whole token."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from conversations import audit
from conversations.admin.base import ReadOnlyAdmin
from conversations.api import tokens
from conversations.models import (
    ApiToken,
    AuditEvent,
    ShareLink,
)
from conversations.sharing.links import revoke_share


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
