"""Admin for provider accounts and the model catalogue.

Secrets are write-only here: the form never renders a stored value, only a mask, and an
empty field keeps what is stored.
"""

from __future__ import annotations

from typing import Any

import axes.admin  # noqa: F401 - registers the login-throttling tables, unregistered below
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_post_parameters

from providers import breaker, services
from providers.fallbacks import refusal
from providers.forms import (
    ALL_CREDENTIAL_NAMES,
    CREDENTIAL_PREFIX,
    ModelConfigForm,
    ProviderForm,
)
from providers.models import ModelConfig, ModelFallback, Provider


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = ["name", "kind", "enabled", "configured", "managed_by_env", "status_badge",
                    "circuit", "last_latency_ms", "last_checked_at"]
    readonly_fields = ["kind", "credentials_summary", "managed_by_env", "last_status",
                       "failing_since", "last_error_kind", "last_error", "last_latency_ms",
                       "last_checked_at", "warnings", "circuit"]
    actions = ["test_connection"]

    def get_fieldsets(self, request: HttpRequest, obj: Provider | None = None) -> Any:
        form_fields = [f"cred_{f.name}" for f in (obj.credential_fields if obj else ())]
        options = ["image_transport"] if obj and obj.kind == "dashscope" else []
        return [
            (None, {"fields": ["kind", "name", "base_url", "enabled", "warnings"]}),
            (_("Credentials"), {"fields": ["credentials_summary", "managed_by_env", *form_fields]}),
            *([(_("Options"), {"fields": options})] if options else []),
            (_("Last check"), {"fields": ["last_status", "failing_since", "last_error_kind",
                                          "last_error", "last_latency_ms",
                                          "last_checked_at", "circuit"]}),
        ]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False,
                 **kwargs: Any) -> Any:
        # The fieldsets name the credential inputs ProviderForm adds per kind in __init__; the
        # form factory only knows model and declared fields, so it must not be given those.
        fields = kwargs.get("fields") or ProviderForm.Meta.fields
        kwargs["fields"] = [name for name in fields if not name.startswith(CREDENTIAL_PREFIX)]
        return super().get_form(request, obj, change, **kwargs)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # one row per backend, created by the seed migration

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @method_decorator(sensitive_post_parameters(*[f"cred_{n}" for n in ALL_CREDENTIAL_NAMES]))
    def changeform_view(self, *args: Any, **kwargs: Any) -> Any:
        return super().changeform_view(*args, **kwargs)

    @admin.display(boolean=True, description=_("configured"))
    def configured(self, obj: Provider) -> bool:
        return obj.is_configured

    @admin.display(description=_("circuit breaker"))
    def circuit(self, obj: Provider) -> str:
        """Open: answers with a fallback skip this provider until the cool-down ends."""
        state = breaker.state(obj.kind)
        if not state.open:
            return str(_("closed"))
        return format_html('<span class="status status-error">{}</span>', _(
            "open for %(seconds)s s more (%(error)s): answers go to their fallback models") % {
            "seconds": state.seconds_left, "error": state.last_error})

    @admin.display(description=_("status"))
    def status_badge(self, obj: Provider) -> str:
        return format_html('<span class="status status-{}">{}</span>', obj.last_status,
                           obj.get_last_status_display())

    @admin.display(description=_("stored credentials"))
    def credentials_summary(self, obj: Provider) -> str:
        masks = obj.masked_credentials()
        return format_html_join(
            "", "<div><strong>{}</strong>: <code>{}</code></div>",
            ((f.label, masks.get(f.name) or _("not set")) for f in obj.credential_fields),
        )

    @admin.display(description=_("warnings"))
    def warnings(self, obj: Provider) -> str:
        notes = [w for w in [obj.site_url_reachable_warning] if w]
        if not obj.credentials_readable():
            notes.append(str(_("The stored credentials cannot be decrypted with the current "
                               "FIELD_ENCRYPTION_KEYS: enter them again.")))
        return format_html_join("", '<p class="warning">{}</p>', ((n,) for n in notes)) or "-"

    @admin.action(description=_("Test connection"))
    def test_connection(self, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
        for provider in queryset:
            result = services.test_connection(provider)
            if result.ok:
                self.message_user(request, _("%(name)s: ok in %(ms)s ms") % {
                    "name": provider.name, "ms": result.duration_ms}, messages.SUCCESS)
            else:
                self.message_user(request, _("%(name)s: %(kind)s — %(message)s") % {
                    "name": provider.name, "kind": result.kind, "message": result.message},
                    messages.ERROR)
            warning = provider.site_url_reachable_warning
            if warning:
                self.message_user(request, warning, messages.WARNING)


class FallbackChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.display_name} ({obj.provider.name})"


class FallbackForm(forms.ModelForm):
    """Text for text, vision only to vision, never the model itself (providers/fallbacks.py)."""

    class Meta:
        model = ModelFallback
        fields = ["model", "fallback", "position"]
        field_classes = {"model": FallbackChoice, "fallback": FallbackChoice}

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        model, fallback = data.get("model"), data.get("fallback")
        if model is not None and fallback is not None:
            problem = refusal(model, fallback)
            if problem:
                self.add_error("fallback", problem)
        return data


@admin.register(ModelFallback)
class ModelFallbackAdmin(admin.ModelAdmin):
    """Ordered fallbacks per model: when a model's provider fails before the first token with a
    curable error, the answer continues on the first of its fallbacks that can take it."""

    form = FallbackForm
    list_display = ["model", "position", "fallback", "fallback_provider"]
    list_display_links = ["model"]
    list_editable = ["position"]
    list_filter = ["model"]
    ordering = ["model__sort_order", "model__slug", "position", "pk"]
    list_select_related = ["model", "fallback", "fallback__provider"]

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        initial = super().get_changeform_initial_data(request)
        model = request.GET.get("model__id__exact") or request.GET.get("model")
        if model:
            initial["model"] = model
        return initial

    @admin.display(description=_("provider"))
    def fallback_provider(self, obj: ModelFallback) -> str:
        return obj.fallback.provider.name


@admin.register(ModelConfig)
class ModelConfigAdmin(admin.ModelAdmin):
    list_display = ["display_name", "provider", "model_id", "vision", "requires_image",
                    "enabled", "for_titles", "price_input_per_mtok", "price_output_per_mtok",
                    "currency"]
    list_editable = ["enabled"]
    list_filter = ["provider", "vision", "enabled"]
    filter_horizontal = ["groups"]
    # The slug is the stable id conversations and forms refer to (and the seeded ones hold dots,
    # which SlugField's validator refuses): it is never edited here.
    readonly_fields = ["slug", "provider", "model_id", "parameter_ranges", "fallback_list"]
    fieldsets = [
        (None, {"fields": ["display_name", "slug", "provider", "model_id", "enabled",
                           "sort_order", "groups", "for_titles", "fallback_list"]}),
        (_("Capabilities and limits"), {"fields": [
            "vision", "requires_image", "supports_tools", "context_window", "max_input_chars",
            "max_images",
            "max_image_bytes", "max_image_pixels", "max_image_side"]}),
        (_("Defaults"), {"fields": ["default_params", "parameter_ranges"]}),
        (_("Prices"), {"fields": ["price_input_per_mtok", "price_output_per_mtok", "currency"]}),
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the catalogue holds the models our clients speak to

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False,
                 **kwargs: Any) -> Any:
        kwargs["form"] = ModelConfigForm
        return super().get_form(request, obj, change, **kwargs)

    def save_model(self, request: HttpRequest, obj: ModelConfig, form: Any,
                   change: bool) -> None:
        with transaction.atomic():
            if obj.for_titles:  # one title model: choosing this one unchooses the other
                others = ModelConfig.objects.filter(for_titles=True).exclude(pk=obj.pk)
                previous = [str(m) for m in others]
                others.update(for_titles=False)
                if previous:
                    self.message_user(request, _(
                        "%(model)s now writes conversation titles instead of %(previous)s.") % {
                        "model": obj, "previous": ", ".join(previous)}, messages.INFO)
            super().save_model(request, obj, form, change)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # disable instead: history keeps referring to the model

    @admin.display(description=_("fallback models"))
    def fallback_list(self, obj: ModelConfig) -> str:
        """The ordered fallbacks, and where to change them."""
        links = obj.fallback_links.select_related("fallback", "fallback__provider")
        names = format_html_join(" → ", "{} ({})", (
            (link.fallback.display_name, link.fallback.provider.name) for link in links))
        url = reverse("admin:providers_modelfallback_changelist")
        add = reverse("admin:providers_modelfallback_add")
        return format_html(
            '{} <a href="{}?model__id__exact={}">{}</a> · <a href="{}?model={}">{}</a>',
            names or _("none"), url, obj.pk, _("change the order"), add, obj.pk,
            _("add a fallback"))

    @admin.display(description=_("accepted parameters"))
    def parameter_ranges(self, obj: ModelConfig) -> str:
        return format_html_join(
            "", "<div><code>{}</code> — {} ({})</div>",
            ((name, spec.label, spec.describe_range()) for name, spec in obj.param_specs().items()),
        )


# The login-throttling tables are machinery, not something an admin manages: a lock ends by
# itself after LOGIN_COOLOFF_MINUTES, and an operator lifts one at once with
# `manage.py axes_reset_username <name>` (docs/deployment.md). axes.admin was imported above,
# so its registrations exist by now, whatever the app order.
for _throttling_model in (AccessAttempt, AccessLog, AccessFailureLog):
    if admin.site.is_registered(_throttling_model):
        admin.site.unregister(_throttling_model)
