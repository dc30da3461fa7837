from __future__ import annotations

from typing import Any

from django import template
from django.utils.safestring import SafeString, mark_safe

from conversations import events
from conversations.errors import answer_error_text
from conversations.rendering import (
    render_markdown,
    render_markdown_cached,
    render_plain,
    render_user_message,
    split_stable,
)

register = template.Library()


@register.filter
def markdown(text: str) -> SafeString:
    """Model output (finished): the one sanitising renderer (never |safe on raw text)."""
    return mark_safe(render_markdown_cached(text or ""))


@register.filter
def user_markdown(text: str) -> SafeString:
    return mark_safe(render_user_message(text or ""))


@register.filter
def plain(text: str) -> SafeString:
    return mark_safe(render_plain(text or ""))


@register.simple_tag
def stream_parts(text: str) -> dict[str, Any]:
    """For an answer still being written: rendered finished blocks + the raw open tail."""
    text = text or ""
    upto = split_stable(text)
    return {"html": mark_safe(render_markdown(text[:upto])),
            "upto": events.u16_len(text[:upto]), "tail": text[upto:]}


@register.filter
def get_item(mapping: Any, key: str) -> Any:
    if isinstance(mapping, dict):
        value = mapping.get(key)
        return "" if value is None else value
    return ""


@register.filter
def answer_error(message: Any) -> str:
    """A failed answer's error in the reader's language, from its stored code (errors.py)."""
    model = getattr(message, "model", None)
    return answer_error_text(message.error_code or "", message.error_message or "",
                             model=model.display_name if model is not None else "")
