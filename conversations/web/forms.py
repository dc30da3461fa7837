from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django import forms
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from conversations.models import Conversation
from providers.models import ModelConfig
from providers.params import ParamSpec


@dataclass
class ParamField:
    """One generation parameter input, shown for the models that accept it."""

    name: str
    label: str
    input_type: str
    step: str
    per_model: dict[str, dict[str, Any]]  # slug -> {"min", "max", "default", "help"}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def range_text(spec: ParamSpec) -> str:
    """`ParamSpec.describe_range` in the reader's language: "an integer, 1 ≤ value ≤ 8192"."""
    low = "" if spec.min is None else f"{_number(spec.min)} {'<' if spec.min_exclusive else '≤'} "
    high = "" if spec.max is None else f" {'<' if spec.max_exclusive else '≤'} {_number(spec.max)}"
    kind = gettext("an integer") if spec.type is int else gettext("a number")
    if not (low or high):
        return kind
    value = gettext("value")
    return gettext("%(kind)s, %(bounds)s") % {"kind": kind, "bounds": f"{low}{value}{high}"}


def param_fields(models: list[ModelConfig]) -> list[ParamField]:
    """The generation parameters of `models`, labelled in the reader's language (the specs
    hold English msgids: providers/params.py)."""
    fields: dict[str, ParamField] = {}
    for model in models:
        for name, spec in model.param_specs().items():
            if spec.type in (list, str):
                continue
            field = fields.setdefault(name, ParamField(
                name, gettext(spec.label), "number", "1" if spec.type is int else "any", {}))
            default = (model.default_params or {}).get(name, spec.default)
            field.per_model[model.slug] = {
                "min": spec.min, "max": spec.max, "default": default,
                "help": f"{range_text(spec)}. {gettext(spec.help)}"}
    return list(fields.values())


def _parse_params(data: Any, model: ModelConfig) -> dict[str, Any]:
    specs: dict[str, ParamSpec] = model.param_specs()
    params: dict[str, Any] = {}
    for name, spec in specs.items():
        raw = (data.get(f"param_{name}") or "").strip()
        if not raw or spec.type in (list, str):
            continue
        try:
            params[name] = int(raw) if spec.type is int else float(raw)
        except ValueError:
            raise forms.ValidationError(
                _("%(label)s must be a number.") % {"label": spec.label}) from None
    return params


def with_model_params(form: forms.Form, data: dict[str, Any]) -> dict[str, Any]:
    """`data` with the chosen model's parameters parsed from the form (errors on the form)."""
    model = data.get("model")
    if model is not None:
        try:
            data["params"] = _parse_params(form.data, model)
        except forms.ValidationError as exc:
            form.add_error(None, exc)
    return data


class _ModelMixin:
    data: Any
    cleaned_data: dict[str, Any]

    def _model_field(self, user: Any) -> forms.ModelChoiceField:
        return forms.ModelChoiceField(
            queryset=ModelConfig.objects.visible_to(user), label=_("Model"),
            to_field_name="slug", empty_label=None,
            error_messages={"invalid_choice": _("This model is not available.")})

    def cleaned_params(self) -> dict[str, Any]:
        return dict(self.cleaned_data.get("params", {}))


class NewConversationForm(_ModelMixin, forms.Form):
    system_prompt = forms.CharField(label=_("System prompt"), required=False, max_length=20_000,
                                    widget=forms.Textarea(attrs={"rows": 3}))
    text = forms.CharField(label=_("Message"), max_length=200_000, required=False,
                           widget=forms.Textarea(attrs={"rows": 3}))
    client_id = forms.UUIDField(required=False)

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model"] = self._model_field(user)
        self.order_fields(["model", "system_prompt", "text"])

    def clean_client_id(self) -> uuid.UUID:
        return self.cleaned_data.get("client_id") or uuid.uuid4()

    def clean(self) -> dict[str, Any]:
        return with_model_params(self, super().clean() or {})


class ConversationSettingsForm(_ModelMixin, forms.Form):
    system_prompt = forms.CharField(label=_("System prompt"), required=False, max_length=20_000,
                                    widget=forms.Textarea(attrs={"rows": 4}))

    def __init__(self, *args: Any, user: Any, conversation: Conversation, **kwargs: Any) -> None:
        kwargs["initial"] = {"model": conversation.model.slug,
                             "system_prompt": conversation.system_prompt}
        super().__init__(*args, **kwargs)
        self.conversation = conversation
        self.fields["model"] = self._model_field(user)
        self.fields["model"].initial = conversation.model.slug
        teams = [(str(g.pk), g.name) for g in conversation.owner.groups.order_by("name")]
        self.fields["team"] = forms.ChoiceField(
            label=_("Shared with"), required=False,
            choices=[("", _("Only me (private)")), *teams],
            initial=str(conversation.team_id or ""),
            help_text=_("Team members see the conversation live in their list."))
        self.order_fields(["model", "system_prompt", "team"])

    def clean(self) -> dict[str, Any]:
        return with_model_params(self, super().clean() or {})
