"""`{% load documents %}`: which parts of the conversation's documents an answer was sent."""

from __future__ import annotations

from typing import Any

from django import template
from django.core.cache import cache
from django.utils.translation import gettext as _

from conversations.documents.context import for_prompt, ranges
from conversations.models import ACTIVE_STATUSES, Document, Message

register = template.Library()


def _has_documents(context: template.Context, conversation_id: Any) -> bool:
    """Does the conversation hold a document? Asked once per page: the answer is kept on the
    page's conversation object (every included message template shares it)."""
    page_conversation: Any = context.get("conversation")
    if getattr(page_conversation, "pk", None) == conversation_id:
        cached = getattr(page_conversation, "_has_documents", None)
        if cached is None:
            cached = Document.objects.filter(conversation_id=conversation_id).exists()
            page_conversation._has_documents = cached
        return bool(cached)
    return Document.objects.filter(conversation_id=conversation_id).exists()


@register.simple_tag(takes_context=True)
def documents_used(context: template.Context, message: Message) -> str:
    """"Used pages 30-32 of report.pdf" for an answer that was sent document text ("" when
    none). The choice is recomputed from the same inputs the request was built from."""
    if message.role != Message.Role.ASSISTANT or message.parent_id is None or (
            not message.content):  # an answer that wrote nothing used nothing
        return ""
    if not _has_documents(context, message.conversation_id):
        return ""
    page_conversation: Any = context.get("conversation")
    conversation: Any = (page_conversation if getattr(page_conversation, "pk", None)
                         == message.conversation_id else message.conversation)
    model = message.model or conversation.model
    if model is None:
        return ""
    prompt = message.parent
    if prompt is None:
        return ""
    key = f"documents-used:{message.pk}"
    parts = cache.get(key) if message.status not in ACTIVE_STATUSES else None
    if parts is None:
        chosen = for_prompt(model, conversation.system_prompt, prompt,
                            (conversation.params or {}).get("max_tokens"))
        parts = [(u.document.display_name, list(u.pages), u.whole) for u in chosen.used]
        if message.status not in ACTIVE_STATUSES:
            cache.set(key, parts, 3600)
    lines = []
    for name, pages, whole in parts:
        if whole:
            lines.append(_("Used all of %(name)s") % {"name": name})
        elif len(pages) == 1:
            lines.append(_("Used page %(pages)s of %(name)s") % {"pages": pages[0],
                                                               "name": name})
        elif pages:
            lines.append(_("Used pages %(pages)s of %(name)s") % {"pages": ranges(pages),
                                                                "name": name})
        else:
            lines.append(_("Used parts of %(name)s") % {"name": name})
    return "; ".join(lines)
