"""Which models may stand in for a model whose provider failed (issue 14: fallback).

The admin orders them per model (`ModelFallback`); the rule is the same in the admin's form and
at run time: another model, text for text and vision only to vision (a vision conversation's
image must still be read). A vision model that needs an image is skipped at run time when the
conversation has none left (the history's own rule).
The decision of when to switch is the answer core's (conversations/answers/fallback.py).
"""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext as _

from providers.models import ModelConfig, ModelFallback


def refusal(model: ModelConfig, fallback: ModelConfig) -> str:
    """Why `fallback` cannot stand in for `model`; "" when it can."""
    if fallback.pk == model.pk:
        return _("A model cannot be its own fallback.")
    if model.vision and not fallback.vision:
        return _("%(model)s reads images: its fallback must read images too.") % {
            "model": model.display_name}
    if fallback.vision != model.vision:
        return _("%(model)s is a text model: its fallback must be a text model.") % {
            "model": model.display_name}
    return ""


def chain(model: ModelConfig, user: Any) -> list[ModelConfig]:
    """`model`'s fallbacks in the admin's order that `user` may use now (enabled, visible)."""
    if user is None:
        return []
    visible = ModelConfig.objects.visible_to(user)
    links = (ModelFallback.objects.filter(model=model, fallback__in=visible)
             .select_related("fallback", "fallback__provider").order_by("position", "pk"))
    return [link.fallback for link in links if not refusal(model, link.fallback)]
