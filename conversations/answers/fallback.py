"""Fallback between backends: when an answer's provider fails before its first token with a kind
another backend can cure, the same answer continues on the model's next fallback.

Curable: `unavailable`, `timeout`, `rate_limited`, `quota_exhausted`, and `auth`. A wrong,
revoked or unreadable key is a fault of one account at one backend: another backend, with its
own key, answers just as well (the admin still has to fix the key; the breaker keeps the broken
backend out of the way meanwhile). Never curable: a content-filter refusal (another vendor must
not be asked to say what one refused), a bad request (our request is wrong for this model),
and anything after the first token (the user has seen text; it is kept, as without fallback).

The models to try are the admin's ordered list (providers/fallbacks.py: text for text, vision
only to vision) that the person who asked may use. The history is shaped again for each
(answers/history.py: its image and context rules); one that refuses the history (no image left
for a model that needs one, too long for its window) is passed over.

A provider whose circuit breaker is open (providers/breaker.py) is passed over too, while a
model remains whose breaker is closed: an answer whose own model's breaker is open starts on
its first fallback at once.

The web answer records the model that wrote it (`Message.model`), the model first asked
(`fallback_from`) and why it switched (`fallback_reason`, the error kind); the ledger row is
moved to the answering model, so usage and cost go to it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from django.utils import translation
from django.utils.translation import gettext as _

from conversations.answers.history import Shaped, request_for
from conversations.errors import ServiceError
from conversations.models import Message, UsageRecord
from providers import breaker
from providers.base import ErrorKind, ProviderError
from providers.fallbacks import chain
from providers.models import ModelConfig

CURABLE = frozenset({ErrorKind.UNAVAILABLE, ErrorKind.TIMEOUT, ErrorKind.RATE_LIMITED,
                     ErrorKind.QUOTA_EXHAUSTED, ErrorKind.AUTH})


def curable(exc: ProviderError) -> bool:
    return exc.kind in CURABLE


def asker(message: Message) -> Any:
    """The person whose models the fallbacks must be among: who asked, else the owner."""
    parent = message.parent
    author = parent.author if parent is not None else None
    return author or message.conversation.owner


def candidates(message: Message) -> list[ModelConfig]:
    """The fallbacks of a web answer's model, in order (sync: reads the database)."""
    if message.model is None:
        return []
    return chain(message.model, asker(message))


def closed(models: Sequence[ModelConfig]) -> list[ModelConfig]:
    """The models whose provider's breaker is closed, in order."""
    return [m for m in models if not breaker.is_open(m.provider.kind)]


def breaker_open(model: ModelConfig) -> bool:
    """Whether `model`'s provider's breaker is open: only then may an answer start elsewhere
    (one read of the shared cache; the fallbacks themselves are read only when it is)."""
    return breaker.state(model.provider.kind).open


def open_reason(model: ModelConfig, fallbacks: Sequence[ModelConfig]) -> str:
    """Why an answer should start on a fallback right away: its provider's breaker is open and
    a fallback's is not. "" when it should start on its own model."""
    if not fallbacks:
        return ""
    state = breaker.state(model.provider.kind)
    if not state.open or not closed(fallbacks):
        return ""
    return state.last_error or ErrorKind.UNAVAILABLE.value


def switch_web(message_id: uuid.UUID, fallbacks: Sequence[ModelConfig], reason: str
               ) -> tuple[ModelConfig, Shaped, list[ModelConfig]] | None:
    """Move a web answer to the first fallback that takes its history (sync).

    Returns the model, its shaped request and the fallbacks left after it; None when none
    does (the caller keeps the first error). Records the switch on the message and the
    ledger row."""
    message = Message.objects.select_related(
        "conversation", "conversation__owner", "parent", "parent__author", "model",
        "fallback_from").filter(pk=message_id).first()
    if message is None or message.model is None:
        return None
    first = message.fallback_from or message.model  # the model first asked, across switches
    remaining = list(fallbacks)
    usable = closed(remaining) or remaining
    for model in usable:
        remaining.remove(model)
        message.model = model
        try:
            with translation.override("en"):
                shaped = request_for(message)
        except ServiceError:
            continue  # this model refuses the history: the next one
        Message.objects.filter(pk=message_id).update(
            model=model, fallback_from=first, fallback_reason=reason[:40],
            context_dropped=shaped.dropped)
        UsageRecord.objects.filter(message_id=message_id).update(model=model)
        return model, shaped, remaining
    return None


# --- what the page says -------------------------------------------------------------------------
def _reason_text(reason: str, provider: str) -> str:
    if reason == ErrorKind.RATE_LIMITED:
        return _("%(provider)s is over capacity") % {"provider": provider}
    if reason == ErrorKind.QUOTA_EXHAUSTED:
        return _("%(provider)s has used up its quota") % {"provider": provider}
    if reason == ErrorKind.TIMEOUT:
        return _("%(provider)s did not answer in time") % {"provider": provider}
    if reason == ErrorKind.AUTH:
        return _("%(provider)s refused our credentials") % {"provider": provider}
    return _("%(provider)s is unavailable") % {"provider": provider}


def notice(message: Message) -> str:
    """The one line a fallback answer shows, in the active language; "" for other answers.
    ("Cloudflare Workers AI is over capacity; answered by Meta-Llama-3-70B-Instruct on Baidu
    Qianfan.")"""
    first, model = message.fallback_from, message.model
    if first is None or model is None:
        return ""
    return _("%(reason)s; answered by %(model)s on %(provider)s.") % {
        "reason": _reason_text(message.fallback_reason, first.provider.get_kind_display()),
        "model": model.display_name, "provider": model.provider.get_kind_display()}
