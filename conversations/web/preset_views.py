"""The presets page: list what a user may use, make personal presets, and (managers, admins)
publish them to a team or site-wide. Every preset is fetched through access.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods, require_POST

from conversations.access import (
    Access,
    get_preset_for,
    may_publish_preset,
    preset_access,
    presets_visible_to,
)
from conversations.errors import ServiceError
from conversations.models import Preset
from conversations.presets import services
from conversations.web.forms import param_fields, with_model_params
from conversations.web.views import _list_context
from providers.models import ModelConfig


@dataclass
class PresetRow:
    preset: Preset
    can_manage: bool
    model_ok: bool


def _publishable_teams(user: Any) -> list[Group]:
    teams = Group.objects.all() if user.is_superuser else user.groups.all()
    return [team for team in teams.order_by("name")
            if may_publish_preset(user, Preset.Scope.TEAM, team.pk)]


class PresetForm(forms.Form):
    name = forms.CharField(label=gettext_lazy("Name"), max_length=services.MAX_NAME,
                           widget=forms.TextInput(attrs={"autocomplete": "off"}))
    icon = forms.CharField(label=gettext_lazy("Icon"), required=False,
                           max_length=services.MAX_ICON,
                           help_text=gettext_lazy("One emoji or a short text, e.g. 🌐 or EN."),
                           widget=forms.TextInput(attrs={"autocomplete": "off", "size": 4}))
    scope = forms.ChoiceField(label=gettext_lazy("Who can use it"))
    system_prompt = forms.CharField(label=gettext_lazy("System prompt"), required=False,
                                    max_length=services.MAX_SYSTEM_PROMPT,
                                    widget=forms.Textarea(attrs={"rows": 5}))
    starters = forms.CharField(
        label=gettext_lazy("Starter prompts"), required=False,
        max_length=20_000,  # the service counts and measures them with a clear message
        help_text=gettext_lazy("One per line; at most 6, each at most 500 characters."),
        widget=forms.Textarea(attrs={"rows": 4}))

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["model"] = forms.ModelChoiceField(
            queryset=ModelConfig.objects.visible_to(user), label=_("Model"),
            to_field_name="slug", empty_label=None,
            error_messages={"invalid_choice": _("This model is not available.")})
        choices = [(Preset.Scope.PERSONAL.value, _("Only me"))]
        choices += [(f"team:{team.pk}", _("Team: %(name)s") % {"name": team.name})
                    for team in _publishable_teams(user)]
        if may_publish_preset(user, Preset.Scope.SITE):
            choices.append((Preset.Scope.SITE.value, _("Everyone on this site")))
        scope_field = self.fields["scope"]
        assert isinstance(scope_field, forms.ChoiceField)
        scope_field.choices = choices
        self.order_fields(["name", "icon", "scope", "model", "system_prompt", "starters"])

    def clean(self) -> dict[str, Any]:
        return with_model_params(self, super().clean() or {})

    def preset_data(self) -> services.PresetData:
        data = self.cleaned_data
        scope, _sep, team_id = str(data["scope"]).partition(":")
        team = Group.objects.filter(pk=int(team_id)).first() if team_id.isdigit() else None
        return services.PresetData(
            name=data["name"], icon=data.get("icon", ""), model=data["model"],
            system_prompt=data.get("system_prompt", ""), params=data.get("params", {}),
            starters=data.get("starters", ""), scope=scope, team=team)


def _initial(preset: Preset) -> dict[str, Any]:
    scope = f"team:{preset.team_id}" if preset.scope == Preset.Scope.TEAM else preset.scope
    return {"name": preset.name, "icon": preset.icon, "scope": scope,
            "model": preset.model.slug, "system_prompt": preset.system_prompt,
            "starters": "\n".join(preset.starters or [])}


def _form_page(request: HttpRequest, form: PresetForm, preset: Preset | None,
               status: int = 200) -> HttpResponse:
    models = list(ModelConfig.objects.visible_to(request.user))
    values = dict(preset.params) if preset is not None else {}
    if request.method == "POST":
        values = {key[len("param_"):]: value for key, value in request.POST.items()
                  if key.startswith("param_")}
    context = {**_list_context(request), "form": form, "preset": preset,
               "param_fields": param_fields(models), "param_values": values}
    return render(request, "presets/form.html", context, status=status)


@login_required
@require_http_methods(["GET"])
def preset_list(request: HttpRequest) -> HttpResponse:
    user = request.user
    visible = presets_visible_to(user).order_by("name")
    usable = set(ModelConfig.objects.visible_to(user).values_list("pk", flat=True))
    rows = [PresetRow(p, preset_access(user, p) >= Access.MANAGE, p.model_id in usable)
            for p in visible]
    sections = [
        (_("Yours"), [r for r in rows if r.preset.scope == Preset.Scope.PERSONAL]),
        *[(_("Team: %(name)s") % {"name": team.name},
           [r for r in rows if r.preset.team_id == team.pk
            and r.preset.scope == Preset.Scope.TEAM])
          for team in user.groups.order_by("name")],
        (_("Everyone on this site"),
         [r for r in rows if r.preset.scope == Preset.Scope.SITE]),
    ]
    context = {**_list_context(request), "sections": sections,
               "can_publish_team": bool(_publishable_teams(user))}
    return render(request, "presets/list.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def preset_new(request: HttpRequest) -> HttpResponse:
    form = PresetForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            preset = services.preset_create(request.user, form.preset_data())
        except ServiceError as exc:
            form.add_error(None, exc.message)
        else:
            flash.success(request, _("Preset “%(name)s” saved.") % {"name": preset.name})
            return redirect("presets")
    return _form_page(request, form, None, status=400 if form.errors else 200)


@login_required
@require_http_methods(["GET", "POST"])
def preset_edit(request: HttpRequest, slug: str) -> HttpResponse:
    preset = get_preset_for(request.user, slug, Access.MANAGE)
    form = PresetForm(request.POST or None, user=request.user,
                      initial=_initial(preset))
    if request.method == "POST" and form.is_valid():
        try:
            services.preset_update(request.user, preset, form.preset_data())
        except ServiceError as exc:
            form.add_error(None, exc.message)
        else:
            flash.success(request, _("Preset “%(name)s” saved.") % {"name": preset.name})
            return redirect("presets")
    return _form_page(request, form, preset, status=400 if form.errors else 200)


@login_required
@require_POST
def preset_delete(request: HttpRequest, slug: str) -> HttpResponse:
    preset = get_preset_for(request.user, slug, Access.MANAGE)
    name = preset.name
    services.preset_delete(request.user, preset)
    flash.success(request, _("Preset “%(name)s” deleted. Conversations started from it keep "
                             "their settings.") % {"name": name})
    return redirect("presets")
