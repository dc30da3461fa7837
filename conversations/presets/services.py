"""Writes of presets: validation, create, update, delete. Views check access first
(access.get_preset_for); these functions check what the writer may publish and refuse with a
ServiceError (nothing changed) otherwise."""

from __future__ import annotations

import secrets
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.utils.text import slugify
from django.utils.translation import gettext as _

from conversations import audit
from conversations.access import may_publish_preset, presets_visible_to
from conversations.errors import ServiceError
from conversations.models import Preset
from providers.base import ProviderError
from providers.models import ModelConfig
from providers.params import validate_params

MAX_NAME = 80
MAX_ICON = 8  # one emoji (several code points with modifiers) or a short text such as "EN"
MAX_STARTERS = 6
MAX_STARTER_CHARS = 500
MAX_SYSTEM_PROMPT = 20_000


@dataclass
class PresetData:
    """What a writer sends; `clean` checks it for one writer."""

    name: str
    model: ModelConfig | None
    icon: str = ""
    system_prompt: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    starters: list[str] = field(default_factory=list)
    scope: str = Preset.Scope.PERSONAL
    team: Group | None = None


def _refuse(code: str, message: str) -> ServiceError:
    return ServiceError(code, message, 400)


def clean_name(value: Any) -> str:
    name = " ".join(str(value or "").split())
    if not name:
        raise _refuse("preset_name", _("Give the preset a name."))
    if len(name) > MAX_NAME:
        raise _refuse("preset_name", _("A preset's name may have at most %(n)d characters.")
                      % {"n": MAX_NAME})
    return name


def clean_icon(value: Any) -> str:
    icon = str(value or "").strip()
    if len(icon) > MAX_ICON or any(unicodedata.category(c)[0] in "CZ" and c != "\u200d"
                                   and unicodedata.category(c) != "Cf" for c in icon):
        raise _refuse("preset_icon", _("The icon must be one emoji or a short text (at most "
                                       "%(n)d characters, no spaces).") % {"n": MAX_ICON})
    return icon


def clean_starters(value: Any) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        value = value.splitlines()
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise _refuse("preset_starters", _("Starter prompts must be a list of texts."))
    starters = [s.strip() for s in value if s.strip()]
    if len(starters) > MAX_STARTERS:
        raise _refuse("preset_starters", _("At most %(n)d starter prompts.")
                      % {"n": MAX_STARTERS})
    if any(len(s) > MAX_STARTER_CHARS for s in starters):
        raise _refuse("preset_starters", _("Each starter prompt may have at most %(n)d "
                                           "characters.") % {"n": MAX_STARTER_CHARS})
    return starters


def clean_system_prompt(value: Any) -> str:
    text = str(value or "").strip()
    if len(text) > MAX_SYSTEM_PROMPT:
        raise _refuse("preset_system_prompt", _("The system prompt may have at most %(n)d "
                                                "characters.") % {"n": MAX_SYSTEM_PROMPT})
    return text


def clean_params(model: ModelConfig, params: Any) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise _refuse("bad_parameter", _("Parameters must be an object."))
    try:
        return validate_params(model.model_id, params)
    except ProviderError as exc:
        raise _refuse("bad_parameter", exc.message) from None


def _check_model(user: Any, model: ModelConfig | None) -> ModelConfig:
    if model is None or not ModelConfig.objects.visible_to(user).filter(pk=model.pk).exists():
        raise _refuse("model_unavailable", _("This model is not available. Pick another one."))
    return model


def _check_scope(user: Any, scope: str, team: Group | None) -> Group | None:
    if scope not in Preset.Scope.values:
        raise _refuse("preset_scope", _("Choose who the preset is for."))
    team = team if scope == Preset.Scope.TEAM else None
    if not may_publish_preset(user, scope, team.pk if team else None):
        if scope == Preset.Scope.TEAM:
            message = _("Only a manager of this team can publish presets to it.")
        else:
            message = _("Only an administrator can publish site-wide presets.")
        raise ServiceError("preset_forbidden", message, 403)
    return team


def _unique_slug(name: str) -> str:
    """The name as a slug (the preset's stable id in links and /v1); a suffix when taken.
    Names without Latin letters (e.g. Chinese) get "preset-<suffix>"."""
    base = (slugify(name) or "preset")[:60].strip("-") or "preset"
    candidate = base
    while Preset.objects.filter(slug=candidate).exists():
        candidate = f"{base}-{secrets.token_hex(3)}"
    return candidate


def _cleaned(user: Any, data: PresetData) -> dict[str, Any]:
    model = _check_model(user, data.model)
    return {
        "name": clean_name(data.name), "icon": clean_icon(data.icon),
        "system_prompt": clean_system_prompt(data.system_prompt),
        "params": clean_params(model, data.params), "starters": clean_starters(data.starters),
        "model": model, "scope": data.scope, "team": _check_scope(user, data.scope, data.team),
    }


def _audit(action: str, user: Any, preset: Preset) -> None:
    if preset.scope != Preset.Scope.PERSONAL:  # what others see is recorded
        audit.record(action, actor=user, target=f"preset {preset.slug}",
                     details={"scope": preset.scope, "team": preset.team_id,
                              "name": preset.name})


def preset_create(user: Any, data: PresetData) -> Preset:
    values = _cleaned(user, data)
    for _attempt in range(3):
        try:
            with transaction.atomic():
                preset = Preset.objects.create(
                    slug=_unique_slug(values["name"]),
                    owner=user if values["scope"] == Preset.Scope.PERSONAL else None,
                    created_by=user, **values)
        except IntegrityError:  # two writers took the same slug at once
            continue
        _audit("preset.published", user, preset)
        return preset
    raise _refuse("preset_slug", _("Could not name this preset; try again."))


def preset_update(user: Any, preset: Preset, data: PresetData) -> Preset:
    """Change a preset the user manages (checked by the view). Conversations started from it
    keep what they copied."""
    values = _cleaned(user, data)
    for name, value in values.items():
        setattr(preset, name, value)
    if preset.scope == Preset.Scope.PERSONAL:
        preset.owner = preset.owner or user
    else:
        preset.owner = None
    preset.save()
    _audit("preset.changed", user, preset)
    return preset


def preset_delete(user: Any, preset: Preset) -> None:
    _audit("preset.deleted", user, preset)
    preset.delete()  # conversations keep their copy; their link is set to NULL


def find_or_recreate(user: Any, data: Any, fallback_model: ModelConfig) -> Preset | None:
    """For an import: the visible preset of the same slug, or one of the importer's own with
    the same content, or a new personal preset with the exported content. None when the
    export holds no preset. Raises ServiceError when the exported content is not valid."""
    if not isinstance(data, dict):
        return None
    slug = data.get("slug")
    if isinstance(slug, str) and slug:
        linked = presets_visible_to(user).filter(slug=slug[:80]).first()
        if linked is not None:
            return linked
    visible = ModelConfig.objects.visible_to(user)
    model_slug = data.get("model")
    model = (visible.filter(slug=model_slug).first() if isinstance(model_slug, str) else None) \
        or fallback_model
    name = clean_name(data.get("name"))
    system_prompt = clean_system_prompt(data.get("system_prompt"))
    same = Preset.objects.filter(scope=Preset.Scope.PERSONAL, owner=user, name=name,
                                 model=model, system_prompt=system_prompt).first()
    if same is not None:
        return same
    params = data.get("params") if isinstance(data.get("params"), dict) else {}
    try:
        cleaned_params = clean_params(model, params)
    except ServiceError:
        cleaned_params = {}  # another model's parameters: the model's defaults instead
    return preset_create(user, PresetData(
        name=name, model=model, icon=clean_icon(data.get("icon")), system_prompt=system_prompt,
        params=cleaned_params, starters=clean_starters(data.get("starters"))))


def export_of(preset: Preset | None) -> dict[str, Any] | None:
    """A preset's name, slug and content, as an export carries it."""
    if preset is None:
        return None
    return {"slug": preset.slug, "name": preset.name, "icon": preset.icon,
            "scope": preset.scope, "model": preset.model.slug,
            "system_prompt": preset.system_prompt, "params": preset.params,
            "starters": preset.starters}
