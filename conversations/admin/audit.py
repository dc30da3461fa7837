"""The audit log: read-only, filterable."""

from __future__ import annotations

import json

from django.contrib import admin
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from conversations.admin.base import ReadOnlyAdmin
from conversations.models import (
    AuditEvent,
)


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
