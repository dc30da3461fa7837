"""`"preset": "<slug>"` in a /v1/chat/completions body: the preset's model, system prompt and
parameters fill in what the request leaves out (explicit request fields win).

Only presets the token's user may use (access.get_preset_for); an unknown preset and one the
user may not see get the same 404, so slugs of other people's presets reveal nothing.
/v1/models never lists presets.
"""

from __future__ import annotations

from typing import Any

from django.http import Http404

from conversations.access import get_preset_for
from conversations.api.errors import ApiError, bad
from conversations.api.requests import OPENAI_PARAMS
from conversations.models import Preset
from providers.models import ModelConfig


def _not_found(slug: Any) -> ApiError:
    return ApiError(404, "preset_not_found",
                    f"The preset {str(slug)[:100]!r} does not exist or you do not have access "
                    "to it.", param="preset")


def _has_system(messages: Any) -> bool:
    return isinstance(messages, list) and any(
        isinstance(m, dict) and m.get("role") in ("system", "developer") for m in messages)


def apply_preset(user: Any, body: Any) -> Any:
    """The body with the preset applied and the "preset" field removed; unchanged without one."""
    if not isinstance(body, dict) or "preset" not in body:
        return body
    body = dict(body)
    slug = body.pop("preset")
    if slug is None:
        return body
    if not isinstance(slug, str) or not slug:
        raise bad("invalid_type", "'preset' must be a preset's slug (a string).", "preset")
    try:
        preset = get_preset_for(user, slug)
    except Http404:
        raise _not_found(slug) from None
    if body.get("model") in (None, ""):
        if not ModelConfig.objects.visible_to(user).filter(pk=preset.model_id).exists():
            raise ApiError(404, "model_not_found",
                           f"The model of the preset {preset.slug!r} is not available to you.",
                           param="preset")
        body["model"] = preset.model.slug
    if preset.system_prompt and not _has_system(body.get("messages")) \
            and isinstance(body.get("messages"), list):
        body["messages"] = [{"role": "system", "content": preset.system_prompt},
                            *body["messages"]]
    _fill_params(body, preset)
    return body


def _fill_params(body: dict[str, Any], preset: Preset) -> None:
    """The preset's parameters the request does not set itself, for the model it asks for."""
    model = ModelConfig.objects.filter(slug=body.get("model")).first()
    specs = model.param_specs() if model is not None else {}
    for name, value in (preset.params or {}).items():
        if name not in specs:
            continue  # another model than the preset's: its own defaults apply
        openai_names = {openai for openai, ours in OPENAI_PARAMS.items() if ours == name}
        if any(body.get(n) is not None for n in {name, *openai_names}):
            continue  # explicit request fields win
        body[name] = value
