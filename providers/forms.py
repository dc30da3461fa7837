"""Forms for provider accounts and the model catalogue, shared by the admin and the product's
own management pages (/manage/providers/, /manage/models/).

Secrets are write-only: a form never renders a stored value, only a mask, and an empty field
keeps what is stored.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_variables

from providers import crypto
from providers.catalogue import TOOL_KINDS
from providers.models import CREDENTIAL_FIELDS, ModelConfig, Provider

CREDENTIAL_PREFIX = "cred_"
ALL_CREDENTIAL_NAMES = sorted({f.name for fields in CREDENTIAL_FIELDS.values() for f in fields})


class ProviderForm(forms.ModelForm):  # type: ignore[type-arg]  # generic in the stubs only
    image_transport = forms.ChoiceField(
        label=_("Image transport"), required=False,
        choices=[("url", _("Signed URL under SITE_URL (documented)")),
                 ("data_uri", _("Inline data URI (unconfirmed for this model)"))],
        help_text=_("How images reach DashScope."),
    )

    class Meta:
        model = Provider
        fields = ["name", "base_url", "enabled"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        provider: Provider = self.instance
        masks = provider.masked_credentials() if provider.pk else {}
        for field in provider.credential_fields:
            current = masks.get(field.name) or _("not set")
            self.fields[f"cred_{field.name}"] = forms.CharField(
                label=field.label, required=False, strip=True,
                widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"})
                if field.secret else forms.TextInput(attrs={"autocomplete": "off"}),
                help_text=_("Stored: %(mask)s. Leave empty to keep it.") % {"mask": current},
                disabled=provider.managed_by_env,
            )
        if provider.kind == "dashscope":
            self.fields["image_transport"].initial = provider.options.get("image_transport", "url")
        else:
            del self.fields["image_transport"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        self.instance.base_url = data.get("base_url", self.instance.base_url)
        return data

    @sensitive_variables("entered", "stored")
    def save(self, commit: bool = True) -> Provider:
        provider: Provider = super().save(commit=False)
        if not provider.managed_by_env:
            entered = {f.name: self.cleaned_data.get(f"cred_{f.name}", "")
                       for f in provider.credential_fields}
            if any(entered.values()):
                try:
                    stored = provider.get_credentials()
                except crypto.CredentialsUnreadable:
                    stored = {}  # re-entry: only what is typed now will be stored
                stored.update({k: v for k, v in entered.items() if v})
                provider.set_credentials(stored)
        if "image_transport" in self.cleaned_data:
            provider.options = {**provider.options,
                                "image_transport": self.cleaned_data["image_transport"] or "url"}
        if commit:
            provider.save()
        return provider




class ModelConfigForm(forms.ModelForm):  # type: ignore[type-arg]  # generic in the stubs only
    class Meta:
        model = ModelConfig
        fields = "__all__"

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("for_titles") and (data.get("requires_image", self.instance.requires_image)):
            self.add_error("for_titles", _("A model that needs an image cannot write titles: "
                                           "they are written from text alone."))
        if data.get("for_titles") and not data.get("enabled", self.instance.enabled):
            self.add_error("for_titles", _("Enable the model to let it write titles."))
        if data.get("supports_tools") and self.instance.provider.kind not in TOOL_KINDS:
            self.add_error("supports_tools", _(
                "This provider's models cannot be sent tools here: only the Cloudflare "
                "models' client translates them."))
        return data


class ModelSettingsForm(ModelConfigForm):
    """What an admin sets on the models page: name, order, who sees it, prices."""

    groups = forms.ModelMultipleChoiceField(
        queryset=Group.objects.order_by("name"), required=False,
        widget=forms.CheckboxSelectMultiple, label=_("Visible to teams"),
        help_text=_("None ticked: every user sees the model."))

    class Meta:
        model = ModelConfig
        fields = ["display_name", "enabled", "sort_order", "groups", "for_titles",
                  "price_input_per_mtok", "price_output_per_mtok", "currency"]

    def clean_currency(self) -> str:
        value = str(self.cleaned_data.get("currency") or "").strip().upper()
        if len(value) != 3 or not value.isalpha():
            raise forms.ValidationError(_("Use a three-letter currency code, e.g. USD."))
        return value

    def clean_price_input_per_mtok(self) -> Decimal:
        return _not_negative(self.cleaned_data.get("price_input_per_mtok"))

    def clean_price_output_per_mtok(self) -> Decimal:
        return _not_negative(self.cleaned_data.get("price_output_per_mtok"))

    def clean_display_name(self) -> str:
        value = str(self.cleaned_data.get("display_name") or "").strip()
        if not value:
            raise forms.ValidationError(_("A model needs a name."))
        return value


def _not_negative(value: Decimal | None) -> Decimal:
    if value is None:
        raise forms.ValidationError(_("Enter a price (0 when it is free)."))
    if value < 0:
        raise forms.ValidationError(_("A price cannot be negative."))
    return value


def save_model_config(form: ModelConfigForm) -> list[str]:
    """Save a model form; choosing it to write titles unchooses the other one. Returns the
    names of the models that no longer write titles."""
    model: ModelConfig = form.instance
    previous: list[str] = []
    with transaction.atomic():
        if form.cleaned_data.get("for_titles"):
            others = ModelConfig.objects.filter(for_titles=True).exclude(pk=model.pk)
            previous = [str(m) for m in others]
            others.update(for_titles=False)
        form.save()
    return previous
