"""Reading a /v1/chat/completions request: JSON within bounds, messages, data: URLs, options.

Nothing here needs the database or the model: what does is in api/prepare.py.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.http import HttpRequest

from conversations import bounded_json
from conversations.api import tools
from conversations.api.errors import ApiError, bad
from providers.base import ToolCall
from providers.params import PARAM_SPECS

MAX_MESSAGES = 500
MAX_IMAGES_PER_REQUEST = 8  # each one is decoded and re-encoded: bounded work per request

# OpenAI name -> our parameter name (providers/params.py).
OPENAI_PARAMS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
    "user": "user_id",  # Qianfan's user_id; ignored for the models without one
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
# Our own names are accepted too (e.g. `top_k` through the openai package's extra_body).
NATIVE_PARAMS = frozenset(name for specs in PARAM_SPECS.values() for name in specs)
# A value that changes nothing: sent by many tools by default, so a model without the
# parameter can ignore it instead of refusing the request.
NEUTRAL_VALUES: dict[str, Callable[[Any], bool]] = {
    "presence_penalty": lambda v: v == 0,
    "frequency_penalty": lambda v: v == 0,
    "stop": lambda v: v in ("", []),
}
# Other OpenAI fields: accepted only with a value that asks for nothing we do not do.
IGNORABLE: dict[str, Callable[[Any], bool]] = {
    "metadata": lambda v: isinstance(v, dict),
    "store": lambda v: v is False,
    "service_tier": lambda v: isinstance(v, str),
    "n": lambda v: v == 1 and not isinstance(v, bool),
    "logprobs": lambda v: v is False,
    "top_logprobs": lambda v: v == 0,
    "logit_bias": lambda v: v == {},
    "tools": lambda v: v == [],
    "functions": lambda v: v == [],
    "tool_choice": lambda v: v in ("none", "auto"),
    "parallel_tool_calls": lambda v: isinstance(v, bool),
    "response_format": lambda v: v == {"type": "text"},
    "modalities": lambda v: v == ["text"],
}
REQUEST_FIELDS = frozenset({"model", "messages", "stream", "stream_options", "fallback"})

# --- request parsing --------------------------------------------------------------------------
@dataclass
class InMessage:
    role: str  # user | assistant | tool
    text: str
    images: list[tuple[bytes, str]] = field(default_factory=list)  # (data, declared mime)
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool turn: the call it answers


@dataclass
class Spec:
    model: Any
    system: str
    messages: list[InMessage]
    options: dict[str, Any]  # every other top-level field, checked once the model is known
    stream: bool
    include_usage: bool
    tools: tools.ToolFields | None = None  # `tools` given (api/tools.py)
    fallback: bool = False  # `"fallback": true`: the model's fallbacks may answer (api.md)

    @property
    def uses_tools(self) -> tuple[str, ...]:
        """The request's fields that need a model accepting tools (empty: none)."""
        fields: tuple[str, ...] = ("tools",) if self.tools is not None else ()
        if any(m.role == "tool" or m.tool_calls for m in self.messages):
            fields += ("messages",)
        return fields

    @property
    def prompt_chars(self) -> int:
        return len(self.system) + sum(len(m.text) for m in self.messages)


def body_limit() -> int:
    """Two images at the upload limit in base64, plus the longest prompt escaped."""
    image = math.ceil(settings.IMAGE_MAX_BYTES * 4 / 3) + 64
    return 2 * image + 8 * settings.MAX_PROMPT_CHARS + 256 * 1024


def read_json(request: HttpRequest) -> Any:
    limit = body_limit()
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    too_large = ApiError(413, "request_too_large",
                         f"The request body is larger than {limit // 1_048_576} MB.")
    if declared > limit:
        raise too_large
    # request.body would apply DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB), too small for one image
    # in base64; the body is read against our own limit instead.
    raw = request.read(limit + 1)
    if len(raw) > limit:
        raise too_large
    try:
        return bounded_json.loads(raw)
    except bounded_json.InvalidJson:
        raise bad("invalid_json", "The request body must be a JSON object (nested at most "
                  f"{bounded_json.MAX_DEPTH} levels deep).") from None


def parse_request(body: Any) -> Spec:
    if not isinstance(body, dict):
        raise bad("invalid_json", "The request body must be a JSON object.")
    if body.get("model") in (None, ""):
        raise bad("missing_required_parameter", "'model' is required.", "model")
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise bad("invalid_type", "'stream' must be true or false.", "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict) or stream_options.get("include_usage") not in (
            None, True, False):
        raise bad("invalid_type", "'stream_options' must be {\"include_usage\": true|false}.",
                   "stream_options")
    if body.get("fallback") not in (None, True, False):
        raise bad("invalid_type", "'fallback' must be true or false.", "fallback")
    system, messages = _parse_messages(body.get("messages"))
    tool_fields = tools.parse_tool_fields(body) if tools.wants_tools(body) else None
    skipped = REQUEST_FIELDS | (frozenset(tools.TOOL_FIELDS) if tool_fields else frozenset())
    options = {k: v for k, v in body.items() if k not in skipped}
    return Spec(model=body["model"], system=system, messages=messages, options=options,
                stream=bool(stream), include_usage=bool(stream_options.get("include_usage")),
                tools=tool_fields, fallback=body.get("fallback") is True)


def _parse_messages(raw: Any) -> tuple[str, list[InMessage]]:
    if not isinstance(raw, list) or not raw:
        raise bad("missing_required_parameter", "'messages' must be a non-empty list.",
                   "messages")
    if len(raw) > MAX_MESSAGES:
        raise bad("too_many_messages", f"At most {MAX_MESSAGES} messages per request.",
                   "messages")
    system: list[str] = []
    messages: list[InMessage] = []
    open_calls: set[str] = set()  # ids of the last assistant turn's calls not yet answered
    for index, item in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise bad("invalid_type", "Each message must be an object.", where)
        role = item.get("role")
        if role in ("system", "developer"):
            text, images_ = _parse_content(item.get("content"), where, images_allowed=False)
            system.append(text)
            continue
        if role not in ("user", "assistant", "tool"):
            raise bad("unsupported_role", f"Role {str(role)[:40]!r} is not supported; use "
                       "system, user, assistant or tool.", f"{where}.role")
        if role == "assistant" and item.get("function_call"):
            raise bad("unsupported_parameter", "'function_call' is not supported; use "
                      "'tool_calls'.", f"{where}.function_call")
        if role == "tool":
            call_id = tools.tool_call_id(item, where, open_calls)
            open_calls.discard(call_id)
            text, _none = _parse_content(item.get("content"), where, images_allowed=False)
            messages.append(InMessage(role=role, text=text, tool_call_id=call_id))
            continue
        calls = (tools.assistant_calls(item["tool_calls"], where)
                 if role == "assistant" and item.get("tool_calls") else ())
        open_calls = {c.id for c in calls}
        text, images_ = _parse_content(item.get("content"), where,
                                       images_allowed=role == "user")
        messages.append(InMessage(role=role, text=text, images=images_, tool_calls=calls))
    if not messages or messages[-1].role not in ("user", "tool"):
        raise bad("invalid_value", "The last message must be a user message (or a tool "
                  "result).", "messages")
    return "\n\n".join(s for s in system if s), messages


def _parse_content(content: Any, where: str, *, images_allowed: bool
                   ) -> tuple[str, list[tuple[bytes, str]]]:
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise bad("invalid_type", "'content' must be a string or a list of parts.",
                    f"{where}.content")
    texts: list[str] = []
    found: list[tuple[bytes, str]] = []
    for number, part in enumerate(content):
        here = f"{where}.content[{number}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            if not images_allowed:
                raise bad("invalid_value", "Images are accepted in user messages only.", here)
            found.append(decode_data_url(_image_url_of(part), here))
        else:
            raise bad("unsupported_content", "Content parts must be {\"type\": \"text\"} or "
                       "{\"type\": \"image_url\"} with a data: URL.", here)
    return "\n".join(texts), found


def _image_url_of(part: dict[str, Any]) -> Any:
    value = part.get("image_url")
    return value.get("url") if isinstance(value, dict) else value


def decode_data_url(url: Any, where: str) -> tuple[bytes, str]:
    """The bytes of a base64 `data:image/...` URL. Any other URL is refused, never fetched."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise bad("image_url_not_allowed",
                   "Only data: URLs are accepted for images (data:image/png;base64,...). This "
                   "server never fetches a URL a client gives.", f"{where}.image_url")
    header, comma, payload = url.partition(",")
    media = header[len("data:"):].split(";")
    if not comma or "base64" not in media[1:] or not media[0].startswith("image/"):
        raise bad("invalid_image", "An image must be a base64 data URL: "
                   "data:image/<type>;base64,<data>.", f"{where}.image_url")
    if len(payload) * 3 // 4 > settings.IMAGE_MAX_BYTES + 3:
        raise bad("image_too_large", f"An image may have at most "
                   f"{settings.IMAGE_MAX_BYTES // 1_048_576} MB.", f"{where}.image_url")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise bad("invalid_image", "The image's base64 data is malformed.",
                   f"{where}.image_url") from None
    return data, media[0]


# --- checks that need the model, the user and the database -------------------------------------
