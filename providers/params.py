"""Sampling parameters each model accepts, with the documented ranges (docs/providers.md).

`PARAM_SPECS` drives both the UI (labels, defaults, ranges) and `validate_params`, which every
client calls before it opens a connection, so a bad value never costs a network round trip.

Our parameter names are the same for every model; a client maps them onto the vendor's wire
names (DashScope: `max_tokens` -> `max_new_tokens`). A `default` of None means "not sent: the
vendor's own default applies"; the help text says what that default is when it is known.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# `_` only marks the labels and help texts for `make messages` (gettext_noop): they stay
# English here; the page that shows them translates them (conversations/web/forms.py).
from django.utils.translation import gettext_noop as _

from providers.base import ErrorKind, ProviderError
from providers.catalogue import (
    CF_TEXT_MODEL,
    CF_VISION_MODEL,
    DASHSCOPE_MODEL,
    QIANFAN_MODEL,
    context_window,
)

# Cloudflare's own default is 256 tokens, which cuts most answers short; we always send this.
CLOUDFLARE_DEFAULT_MAX_TOKENS = 1024


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: Python type (int, float or list for string lists), inclusive bounds."""

    type: type
    min: float | None
    max: float | None
    default: Any
    label: str
    help: str
    min_exclusive: bool = False  # the lower bound itself is not allowed, e.g. top_p > 0
    max_exclusive: bool = False
    max_items: int | None = None  # list parameters (Qianfan `stop`)
    max_item_length: int | None = None

    def describe_range(self) -> str:
        if self.type is str:
            return f"a string of at most {self.max_item_length} characters"
        if self.type is list:
            return f"up to {self.max_items} strings of at most {self.max_item_length} characters"
        low = "" if self.min is None else f"{_fmt(self.min)} {'<' if self.min_exclusive else '≤'} "
        high = "" if self.max is None else f" {'<' if self.max_exclusive else '≤'} {_fmt(self.max)}"
        kind = "an integer" if self.type is int else "a number"
        return f"{kind}, {low}value{high}" if (low or high) else kind


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _cloudflare_specs() -> dict[str, ParamSpec]:
    penalty_help = _("Optional; 0..2 per the model schema.")
    return {
        "max_tokens": ParamSpec(
            int, 1, context_window(CF_TEXT_MODEL), CLOUDFLARE_DEFAULT_MAX_TOKENS, _("Max tokens"),
            _("Longest answer in tokens, at most the context window. Always sent: Cloudflare's own "
            "default (256) is too short."),
        ),
        "temperature": ParamSpec(
            float, 0, 5, None, _("Temperature"), _("Randomness, 0..5. Cloudflare's default is 0.6.")
        ),
        "top_p": ParamSpec(
            float, 0, 2, None, _("Top p"), _("Nucleus sampling, 0..2 per the schema.")
        ),
        "top_k": ParamSpec(
            int, 1, 50, None, _("Top k"), _("Sample from the k likeliest tokens, 1..50.")
        ),
        "seed": ParamSpec(
            int, 1, 9_999_999_999, None, _("Seed"), _("Fixed seed for repeatable answers.")
        ),
        "repetition_penalty": ParamSpec(float, 0, 2, None, _("Repetition penalty"), penalty_help),
        "frequency_penalty": ParamSpec(float, 0, 2, None, _("Frequency penalty"), penalty_help),
        "presence_penalty": ParamSpec(float, 0, 2, None, _("Presence penalty"), penalty_help),
    }


# DashScope (seed 002): max_new_tokens (default 512, within the 8192-token context), top_p in
# (0, 1], temperature >= 0 (no upper bound stated), top_k (None, or above 100 = off),
# min_new_tokens.
_DASHSCOPE_WINDOW = context_window(DASHSCOPE_MODEL)
_DASHSCOPE_SPECS: dict[str, ParamSpec] = {
    "max_tokens": ParamSpec(
        int, 1, _DASHSCOPE_WINDOW, None, _("Max tokens"),
        _("Sent as max_new_tokens. DashScope's default is 512; the context is 8192 tokens."),
    ),
    "min_new_tokens": ParamSpec(
        int, 1, _DASHSCOPE_WINDOW, None, _("Min tokens"), _("Shortest answer in tokens."),
    ),
    "temperature": ParamSpec(
        float, 0, None, None, _("Temperature"),
        _("Randomness, 0 or more. DashScope's default is 0.8."),
    ),
    "top_p": ParamSpec(
        float, 0, 1, None, _("Top p"), _("Nucleus sampling, 0 < value ≤ 1."), min_exclusive=True
    ),
    "top_k": ParamSpec(
        int, 1, None, None, _("Top k"),
        _("Sample from the k likeliest tokens; above 100 turns top-k sampling off."),
    ),
}

# Qianfan (seed 003): temperature (0, 1], top_k positive, top_p [0, 1], penalty_score [1, 2],
# stop (<= 4 x <= 20 characters), user_id. The Llama endpoint has no output-length parameter:
# `max_tokens` is ours, enforced by the client while it reads (providers/qianfan.py) and never
# sent.
_QIANFAN_SPECS: dict[str, ParamSpec] = {
    "max_tokens": ParamSpec(
        int, 1, context_window(QIANFAN_MODEL), None, _("Max tokens"),
        _("Longest answer in tokens (estimated). Qianfan has no such parameter for this model: "
        "the answer is cut here when it reaches the limit."),
    ),
    "temperature": ParamSpec(
        float, 0, 1, None, _("Temperature"),
        _("Randomness. Qianfan requires 0 < value ≤ 1; 0 is sent as 0.01."),
    ),
    "top_k": ParamSpec(int, 1, None, None, _("Top k"), _("Sample from the k likeliest tokens.")),
    "top_p": ParamSpec(float, 0, 1, None, _("Top p"), _("Nucleus sampling, 0 ≤ value ≤ 1.")),
    "penalty_score": ParamSpec(
        float, 1, 2, None, _("Penalty score"), _("Repetition penalty, 1..2.")
    ),
    "stop": ParamSpec(
        list, None, None, None, _("Stop sequences"),
        _("Up to 4 strings of at most 20 characters each."), max_items=4, max_item_length=20,
    ),
    "user_id": ParamSpec(
        str, None, None, None, _("User id"), _("Who asks, for the vendor's abuse tracking."),
        max_item_length=128,
    ),
}

PARAM_SPECS: dict[str, dict[str, ParamSpec]] = {
    CF_TEXT_MODEL: _cloudflare_specs(),
    CF_VISION_MODEL: _cloudflare_specs(),
    DASHSCOPE_MODEL: _DASHSCOPE_SPECS,
    QIANFAN_MODEL: _QIANFAN_SPECS,
}


def bad_param(message: str) -> ProviderError:
    return ProviderError(ErrorKind.BAD_REQUEST, message, vendor_code="invalid_parameter")


def specs_for(model_id: str) -> dict[str, ParamSpec]:
    try:
        return PARAM_SPECS[model_id]
    except KeyError:
        known = ", ".join(sorted(PARAM_SPECS))
        raise ProviderError(
            ErrorKind.BAD_REQUEST,
            f"Unknown model {model_id!r}; known models: {known}.",
            vendor_code="unknown_model",
        ) from None


def validate_params(model_id: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Typed, range-checked copy of `params`; None values mean "not set" and are dropped.

    Raises ProviderError(BAD_REQUEST) naming the parameter and its allowed range.
    """
    specs = specs_for(model_id)
    cleaned: dict[str, Any] = {}
    for name, value in params.items():
        spec = specs.get(name)
        if spec is None:
            allowed = ", ".join(sorted(specs)) or "none"
            raise bad_param(
                f"Parameter {name!r} is not accepted by {model_id}; allowed: {allowed}."
            )
        if value is None:
            continue
        cleaned[name] = _check(name, spec, value)
    return cleaned


def _check(name: str, spec: ParamSpec, value: Any) -> Any:
    if spec.type is list:
        return _check_strings(name, spec, value)
    if spec.type is str:
        if not isinstance(value, str) or (
                spec.max_item_length is not None and len(value) > spec.max_item_length):
            raise bad_param(f"Parameter {name!r} must be {spec.describe_range()}.")
        return value
    number = _coerce_number(name, spec, value)
    if not _in_range(spec, number):
        raise bad_param(f"Parameter {name!r} must be {spec.describe_range()}; got {value!r}.")
    return number


def _coerce_number(name: str, spec: ParamSpec, value: Any) -> int | float:
    wrong = bad_param(f"Parameter {name!r} must be {spec.describe_range()}; got {value!r}.")
    if isinstance(value, bool):
        raise wrong
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise wrong from None
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise wrong
    if spec.type is int:
        if not float(value).is_integer():
            raise wrong
        return int(value)
    return float(value)


def _in_range(spec: ParamSpec, number: float) -> bool:
    if spec.min is not None and (
        number < spec.min or (spec.min_exclusive and number == spec.min)
    ):
        return False
    return not (
        spec.max is not None and (number > spec.max or (spec.max_exclusive and number == spec.max))
    )


def _check_strings(name: str, spec: ParamSpec, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    wrong = bad_param(f"Parameter {name!r} must be {spec.describe_range()}.")
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise wrong
    if spec.max_items is not None and len(value) > spec.max_items:
        raise wrong
    if spec.max_item_length is not None and any(len(v) > spec.max_item_length for v in value):
        raise wrong
    return [v for v in value if v]
