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
    units = _units(messages)
    unit_tokens = [sum(estimate_message_tokens(messages[j].text, len(messages[j].images))
                       for j in unit) for unit in units]
    unit_chars = [sum(len(messages[j].text) for j in unit) for unit in units]
    protected = {len(units) - 1}
    with_image = [i for i, unit in enumerate(units) if any(messages[j].images for j in unit)]
    if with_image:
        protected.add(with_image[-1])
    wanted = int(params.get("max_tokens") or DEFAULT_OUTPUT_TOKENS)
    tokens = estimate_tokens(system) + sum(unit_tokens)
    chars = len(system) + sum(unit_chars)

    def fits(output: int) -> bool:
        return (not window or tokens + output <= window) and (
            not max_chars or chars <= max_chars)

    # History goes first: the oldest turns are left out while the input and the output asked
    # for do not fit together.
    dropped_units: set[int] = set()
    for index in range(len(units)):
        if fits(wanted):
            break
        if index not in protected:
            dropped_units.add(index)
            tokens -= unit_tokens[index]
            chars -= unit_chars[index]
    # Then the output: reduced when the window is nearly full, never below MIN_OUTPUT_TOKENS.
    if not fits(min(wanted, MIN_OUTPUT_TOKENS)):
        raise too_long(model, tokens=tokens, chars=chars)
    if not fits(wanted) and "max_tokens" in model.param_specs():
        params["max_tokens"] = window - tokens
    indexes = [j for i, unit in enumerate(units) if i not in dropped_units for j in unit]
    dropped = len(messages) - len(indexes)
    return Fitted(tuple(messages[j] for j in indexes), params, dropped)
