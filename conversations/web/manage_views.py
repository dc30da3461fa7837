"""The product's own management pages for superusers: providers at a glance, and the models.

/manage/providers/   each provider's status from its last call or test (ok, failing since ...,
                     the last error kind and message, redacted), the median time to first token
                     over the last day, the models it serves, a "Test connection" button, and its
                     settings with the key fields write-only (providers/forms.py, as in the admin)
/manage/models/      every model in the order the chat's switcher shows them: enable, order,
                     rename, visibility per team, prices, and each team's default model

Anyone but a superuser gets a 404 (the pages do not exist for them); every POST carries CSRF.
Changes are recorded in the audit trail by its signal receivers, as made by this request's user.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Prefetch, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from conversations import audit
from conversations.models import TeamSettings
from conversations.usage.latency import median_ttft_by_provider
from providers import breaker, services
from providers import status as provider_status
from providers.forms import (
    ALL_CREDENTIAL_NAMES,
    CREDENTIAL_PREFIX,
    ModelSettingsForm,
    ProviderForm,
    save_model_config,
)
from providers.models import ModelConfig, Provider

View = Callable[..., HttpResponse]
ORDER_STEP = 10


def superuser_required(view: View) -> View:
    """Signed in (else the login page), and a superuser (else 404: nothing to see here)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not getattr(request.user, "is_superuser", False):
            raise Http404
        return view(request, *args, **kwargs)

    return login_required(wrapped)


# --- providers ------------------------------------------------------------------------------
@dataclass
class ProviderRow:
    state: provider_status.ProviderState
    median_ttft_ms: int | None
    models: list[ModelConfig] = field(default_factory=list)
    circuit: breaker.State | None = None  # skipped by answers with a fallback while open

    @property
    def provider(self) -> Provider:
        return self.state.provider


@superuser_required
@require_GET
def providers_page(request: HttpRequest) -> HttpResponse:
    medians = median_ttft_by_provider()
    providers = Provider.objects.order_by("kind").prefetch_related(
        Prefetch("models", queryset=ModelConfig.objects.order_by("sort_order", "display_name")))
    rows = [ProviderRow(provider_status.state_of(p), medians.get(p.pk), list(p.models.all()),
                        breaker.state(p.kind))
            for p in providers]
    return render(request, "manage/providers.html", {"rows": rows})


@superuser_required
@require_POST
def provider_test(request: HttpRequest, kind: str) -> HttpResponse:
    provider = get_object_or_404(Provider, kind=kind)
    result = services.test_connection(provider)
    if result.ok:
        flash.success(request, _("%(name)s: connection works (%(ms)s ms).") % {
            "name": provider.name, "ms": result.duration_ms})
    else:
        flash.error(request, _("%(name)s: the test failed (%(kind)s): %(message)s") % {
            "name": provider.name, "kind": result.kind,
            "message": provider_status.state_of(provider).last_error or result.kind})
    warning = provider.site_url_reachable_warning
    if warning:
        flash.warning(request, warning)
    return redirect(reverse("manage_providers") + f"#provider-{provider.kind}")


@sensitive_post_parameters(*[CREDENTIAL_PREFIX + n for n in ALL_CREDENTIAL_NAMES])
@superuser_required
@require_http_methods(["GET", "POST"])
def provider_edit(request: HttpRequest, kind: str) -> HttpResponse:
    provider = get_object_or_404(Provider, kind=kind)
    form = ProviderForm(request.POST or None, instance=provider)
    if request.method == "POST" and form.is_valid():
        with audit.acting(request):
            form.save()
        flash.success(request, _("%(name)s saved.") % {"name": provider.name})
        return redirect(reverse("manage_providers") + f"#provider-{provider.kind}")
    response = render(request, "manage/provider_edit.html", {
        "provider": provider, "form": form, "state": provider_status.state_of(provider),
    }, status=400 if form.errors else 200)
    response["Cache-Control"] = "no-store"
    return response


# --- models ---------------------------------------------------------------------------------
def models_for_team(team: Group) -> QuerySet[ModelConfig]:
    """The enabled models a team's members may pick: open to all, or to this team."""
    return (ModelConfig.objects.usable().filter(Q(groups__isnull=True) | Q(groups=team))
            .distinct().order_by("sort_order", "display_name"))


@dataclass
class TeamDefault:
    team: Group
    choices: list[ModelConfig]
    current_id: int | None

    @property
    def field_name(self) -> str:
        return f"team-{self.team.pk}"


def _team_defaults() -> list[TeamDefault]:
    current = dict(TeamSettings.objects.values_list("team_id", "default_model_id"))
    return [TeamDefault(team, list(models_for_team(team)), current.get(team.pk))
            for team in Group.objects.order_by("name")]


@superuser_required
@require_GET
def models_page(request: HttpRequest) -> HttpResponse:
    models = list(ModelConfig.objects.select_related("provider").prefetch_related("groups")
                  .order_by("sort_order", "display_name"))
    return render(request, "manage/models.html", {
        "models": models, "team_defaults": _team_defaults()})


@superuser_required
@require_http_methods(["GET", "POST"])
def model_edit(request: HttpRequest, slug: str) -> HttpResponse:
    model = get_object_or_404(ModelConfig.objects.select_related("provider"), slug=slug)
    form = ModelSettingsForm(request.POST or None, instance=model)
    if request.method == "POST" and form.is_valid():
        with audit.acting(request):
            previous = save_model_config(form)
        flash.success(request, _("%(model)s saved.") % {"model": model.display_name})
        if previous:
            flash.info(request, _("%(model)s now writes conversation titles instead of "
                                  "%(previous)s.") % {"model": model.display_name,
                                                      "previous": ", ".join(previous)})
        return redirect(reverse("manage_models") + f"#model-{model.slug}")
    return render(request, "manage/model_edit.html", {"model": model, "form": form},
                  status=400 if form.errors else 200)


@superuser_required
@require_POST
def model_enabled(request: HttpRequest, slug: str) -> HttpResponse:
    """Enable or disable a model from the list (enabled=1|0)."""
    model = get_object_or_404(ModelConfig, slug=slug)
    value = request.POST.get("enabled")
    if value not in {"0", "1"}:
        flash.error(request, _("Choose enable or disable."))
        return redirect("manage_models")
    model.enabled = value == "1"
    fields = ["enabled"]
    if not model.enabled and model.for_titles:
        # A disabled model writes no titles: the cheapest enabled text model takes over.
        model.for_titles = False
        fields.append("for_titles")
        flash.info(request, _("%(model)s no longer writes conversation titles; the cheapest "
                              "enabled text model does.") % {"model": model.display_name})
    with audit.acting(request):
        model.save(update_fields=fields)
    if model.enabled:
        flash.success(request, _("%(model)s is enabled.") % {"model": model.display_name})
    else:
        flash.success(request, _("%(model)s is disabled: it is no longer offered in the chat.")
                      % {"model": model.display_name})
    return redirect(reverse("manage_models") + f"#model-{model.slug}")


@superuser_required
@require_POST
def model_move(request: HttpRequest, slug: str) -> HttpResponse:
    """One place up or down in the switcher's order; the order is renumbered in steps of 10."""
    direction = request.POST.get("direction")
    if direction not in {"up", "down"}:
        flash.error(request, _("Choose up or down."))
        return redirect("manage_models")
    with transaction.atomic(), audit.acting(request):
        ordered = list(ModelConfig.objects.select_for_update()
                       .order_by("sort_order", "display_name"))
        index = next((i for i, m in enumerate(ordered) if m.slug == slug), None)
        if index is None:
            raise Http404
        other = index - 1 if direction == "up" else index + 1
        if 0 <= other < len(ordered):
            ordered[index], ordered[other] = ordered[other], ordered[index]
        for position, model in enumerate(ordered, start=1):
            if model.sort_order != position * ORDER_STEP:
                model.sort_order = position * ORDER_STEP
                model.save(update_fields=["sort_order"])
    return redirect(reverse("manage_models") + f"#model-{slug}")


@superuser_required
@require_POST
def team_defaults(request: HttpRequest) -> HttpResponse:
    """Each team's default model: one of the models its members may pick, or none."""
    rows = _team_defaults()
    chosen: dict[int, ModelConfig | None] = {}
    errors = []
    for row in rows:
        if row.field_name not in request.POST:
            continue
        slug = request.POST.get(row.field_name, "").strip()
        if not slug:
            chosen[row.team.pk] = None
            continue
        match = next((m for m in row.choices if m.slug == slug), None)
        if match is None:
            errors.append(row.team.name)
        else:
            chosen[row.team.pk] = match
    if errors:  # nothing is changed when one choice is wrong
        flash.error(request, _("Not saved: the model chosen for %(teams)s is not available to "
                               "that team.") % {"teams": ", ".join(errors)})
        return redirect(reverse("manage_models") + "#team-defaults")
    changed = 0
    with transaction.atomic(), audit.acting(request):
        for row in rows:
            if row.team.pk not in chosen:
                continue
            model = chosen[row.team.pk]
            new_id = model.pk if model else None
            if new_id == row.current_id:
                continue
            settings_row, _created = TeamSettings.objects.get_or_create(team=row.team)
            settings_row.default_model = model
            settings_row.save(update_fields=["default_model"])
            audit.record("team.default_model", actor=request.user, target=f"team {row.team.pk}",
                         details={"model": model.slug if model else None}, request=request)
            changed += 1
    if changed:
        flash.success(request, _("Default models saved."))
    else:
        flash.info(request, _("Nothing changed."))
    return redirect(reverse("manage_models") + "#team-defaults")
