"""The context budget: what of a history fits a model's window, for the web page and `/v1` alike.

A model's window (`ModelConfig.context_window`, tokens) holds the input and the output it is
asked for. The input is estimated with the one conservative estimate (providers/tokens.py). When
the history does not fit, the oldest turns are left out, a user turn with the answers that
followed it at a time, but never the system prompt, the latest user turn, or the turn that
carries the one image a vision model is sent. When what is left still leaves less room than the
output asked for, the output is reduced (never below MIN_OUTPUT_TOKENS). A prompt that does not
fit even alone is refused before any network call (`context_length_exceeded`).

`max_input_chars` (Qianfan: 4,800 characters including the system prompt) is kept the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.utils.translation import gettext as _

from conversations.errors import ServiceError
from providers.base import Message as WireMessage
from providers.models import ModelConfig
from providers.tokens import estimate_message_tokens, estimate_tokens

MIN_OUTPUT_TOKENS = 256
# When a model's request names no output length, this much of the window stays free for it.
DEFAULT_OUTPUT_TOKENS = 1024


@dataclass(frozen=True)
class Fitted:
    messages: tuple[WireMessage, ...]
    params: dict[str, Any]
    dropped: int  # messages left out, counted from the oldest


def _units(messages: Sequence[WireMessage]) -> list[list[int]]:
    """Indexes grouped as a user turn and the answers after it (a leading answer alone)."""
    units: list[list[int]] = []
    for index, message in enumerate(messages):
        if message.role == "user" or not units:
            units.append([index])
        else:
            units[-1].append(index)
    return units


def too_long(model: ModelConfig, *, tokens: int, chars: int) -> ServiceError:
    if model.max_input_chars and chars > model.max_input_chars:
        message = _("This message is too long for %(model)s: %(chars)s characters with the "
                    "system prompt; it reads at most %(limit)s. Shorten it or choose another "
                    "model.") % {"model": model.display_name, "chars": f"{chars:,}",
                                 "limit": f"{model.max_input_chars:,}"}
    else:
        message = _("This message is too long for %(model)s: about %(tokens)s tokens with the "
                    "system prompt, and the model reads at most %(window)s, its answer "
                    "included. Shorten it or choose a model with a larger context.") % {
            "model": model.display_name, "tokens": f"{tokens:,}",
            "window": f"{model.context_window:,}"}
    return ServiceError("context_length_exceeded", message)


def check_prompt(model: ModelConfig, system: str, text: str, images: int = 0) -> None:
    """Refuse a single prompt that cannot fit the model however short the history."""
    tokens = estimate_tokens(system) + estimate_message_tokens(text, images)
    chars = len(system) + len(text)
    if tokens + MIN_OUTPUT_TOKENS > (model.context_window or tokens + MIN_OUTPUT_TOKENS) or (
            model.max_input_chars and chars > model.max_input_chars):
        raise too_long(model, tokens=tokens, chars=chars)


def fit(model: ModelConfig, system: str, messages: Sequence[WireMessage],
        params: Mapping[str, Any]) -> Fitted:
    """The messages that fit the model's window, and the parameters with the output reduced
    when the window is nearly full. Raises ServiceError(context_length_exceeded)."""
    params = dict(params)
    if not messages:
        return Fitted((), params, 0)
    window = model.context_window or 0
    max_chars = model.max_input_chars or 0
    costs = [estimate_message_tokens(m.text, len(m.images)) for m in messages]
    chars = [len(m.text) for m in messages]
    units = _units(messages)
    protected = {0 if not units else len(units) - 1}
    with_image = [i for i, unit in enumerate(units) if any(messages[j].images for j in unit)]
    if with_image:
        protected.add(with_image[-1])
    system_tokens, system_chars = estimate_tokens(system), len(system)
    wanted = int(params.get("max_tokens") or DEFAULT_OUTPUT_TOKENS)

    def input_tokens(kept: list[int]) -> int:
        return system_tokens + sum(costs[j] for i in kept for j in units[i])

    def input_chars(kept: list[int]) -> int:
        return system_chars + sum(chars[j] for i in kept for j in units[i])

    def fits(kept: list[int], output: int) -> bool:
        return (not window or input_tokens(kept) + output <= window) and (
            not max_chars or input_chars(kept) <= max_chars)

    # History goes first: the oldest turns are left out while the input and the output asked
    # for do not fit together.
    kept = list(range(len(units)))
    while not fits(kept, wanted):
        droppable = _droppable(kept, protected)
        if droppable is None:
            break
        kept.remove(droppable)
    # Then the output: reduced when the window is nearly full, never below MIN_OUTPUT_TOKENS.
    if not fits(kept, min(wanted, MIN_OUTPUT_TOKENS)):
        raise too_long(model, tokens=input_tokens(kept), chars=input_chars(kept))
    if not fits(kept, wanted) and "max_tokens" in model.param_specs():
        params["max_tokens"] = window - input_tokens(kept)
    indexes = [j for i in kept for j in units[i]]
    dropped = len(messages) - len(indexes)
    return Fitted(tuple(messages[j] for j in indexes), params, dropped)


def _droppable(kept: list[int], protected: set[int]) -> int | None:
    """The oldest unit that may be left out."""
    return next((i for i in kept if i not in protected), None)
