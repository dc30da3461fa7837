"""What every section of the operations console shares: changes saved there are audited with
the admin who made them (`audit.acting`); read-only sections for records nobody edits."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.translation import gettext_noop

from conversations import audit

# Words of Django's admin and of django-axes that their own catalogues leave untranslated in
# Simplified Chinese: listed here so `make messages` puts them in ours (LOCALE_PATHS wins).
THIRD_PARTY_WORDS = (
    gettext_noop("Model name"), gettext_noop("Add link"),
    gettext_noop("Change or view list link"), gettext_noop("Axes"),
    gettext_noop("Access attempts"), gettext_noop("Access failures"),
    gettext_noop("Access logs"),
)


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
