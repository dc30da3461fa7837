"""`{% load fallback %}`: the one line an answer written by a fallback model shows."""

from __future__ import annotations

from typing import Any

from django import template

from conversations.answers.fallback import notice

register = template.Library()


@register.filter
def fallback_notice(message: Any) -> str:
    """"Cloudflare Workers AI is over capacity; answered by … on …." (escaped by the page)."""
    return notice(message)
