"""Presets for the operations console: every scope listed; the same validation as the
product's presets page (presets/services.py)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from conversations.admin.base import AuditedAdmin
from conversations.errors import ServiceError
from conversations.models import Preset
from conversations.presets import services


class PresetAdminForm(forms.ModelForm):
    class Meta:
        model = Preset
        fields = ("slug", "name", "icon", "scope", "owner", "team", "model", "system_prompt",
                  "params", "starters")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        try:
            for name, check in (("name", services.clean_name), ("icon", services.clean_icon),
                                ("starters", services.clean_starters),
                                ("system_prompt", services.clean_system_prompt)):
                if name in data:
                    data[name] = check(data[name])
            if data.get("model") is not None:
                data["params"] = services.clean_params(data["model"], data.get("params") or {})
        except ServiceError as exc:
            raise forms.ValidationError(exc.message) from None
        scope = data.get("scope")
        if scope == Preset.Scope.PERSONAL and not data.get("owner"):
            self.add_error("owner", _("A personal preset needs an owner."))
        if scope == Preset.Scope.TEAM and not data.get("team"):
            self.add_error("team", _("A team preset needs a team."))
        if scope != Preset.Scope.PERSONAL:
            data["owner"] = None
        if scope != Preset.Scope.TEAM:
            data["team"] = None
        return data


@admin.register(Preset)
class PresetAdmin(AuditedAdmin):
    form = PresetAdminForm
    list_display = ("__str__", "slug", "scope", "team", "owner", "model", "updated_at")
    list_filter = ("scope", "team", "model")
    search_fields = ("name", "slug", "owner__username")
    list_select_related = ("team", "owner", "model")
    readonly_fields = ("created_by", "created_at", "updated_at")

    def save_model(self, request: Any, obj: Preset, form: Any, change: bool) -> None:
        if not change and obj.created_by_id is None:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
