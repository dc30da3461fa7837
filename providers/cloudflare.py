"""Cloudflare Workers AI client (native REST `ai/run`, docs/providers.md section 1).

Request shapes:
* text, or the vision model without any image: the `messages` shape;
* the vision model with an image: `{"prompt": <conversation flattened>, "image": [bytes as
  ints]}`. This is the "practical rule" of providers.md 1.1: the byte array with `prompt` is
  the most widely confirmed form over REST; the messages+image variants differ between schema
  snapshots. Only the most recent image is sent (the model takes one).

`max_tokens` is always sent (upstream default 256 cuts answers short). Stream events are bare
`data:` JSON objects; `response` is an increment, `usage` arrives in a last event, `[DONE]`
ends the stream. Unknown keys (`p` padding, `choices`, `neurons`) are ignored; any object with
a non-empty `errors` list is fatal; EOF without `[DONE]` is a truncated answer.

Tools (docs/api.md "Tool calls"): with `tools` the `messages` shape is always used (the
vision model's image then travels as the top-level `image` byte array, which that shape also
takes). Tools go as `{"type": "function", "function": {...}}`, each parameter with the
`description` the vendor's schema requires; an assistant turn that called tools is sent as its
calls in JSON text (`{"name": ..., "parameters": {...}}`, Llama 3.2's own form: the schema's
messages carry only `role` and `content`), a tool result as a `tool` turn. The vendor answers
with `tool_calls: [{"name", "arguments": {...}}]` beside `response`, in the non-stream result or
in stream events; both that form and OpenAI's (`function.arguments` text, an `index`) are read.
A request with tools is sent with `stream: false` (the vendor documents `tool_calls` only in the
whole answer; no streamed tool-call form is confirmed, docs/provider-audit.md section 6): its
answer arrives at once, as one delta before the finish that carries the calls.

Licence gate (vision model): a 403/5016 is answered once with `{"prompt": "agree"}`, then the
original request is retried once.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx

from providers.base import (
    ChatRequest,
    Delta,
    ErrorKind,
    Finish,
    ImagePart,
    Message,
    ProviderConfig,
    ProviderError,
    StreamItem,
    Tool,
    ToolCall,
    Usage,
)
from providers.client import StreamingClient, json_object, vendor_url
from providers.params import CLOUDFLARE_DEFAULT_MAX_TOKENS
from providers.redact import safe_vendor_text
from providers.retry import (
    RetryPolicy,
    TransportErrors,
    is_event_stream,
    parse_retry_after,
    read_body_limited,
)
from providers.sse import SSEDecoder, aiter_events

logger = logging.getLogger("providers.cloudflare")

NAME = "Cloudflare Workers AI"
MAX_PROMPT_CHARS = 131_072
LICENCE_CODE = "5016"
_LICENCE_ACCEPTED_TEXT = "thank you for agreeing"
_UUID_IN_PARENS = re.compile(r"\(([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                             r"[0-9a-fA-F]{12})\)")
_MODERATION = re.compile(r"(?i)moderation|content filter|inappropriate content")
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Vendor code -> kind (providers.md 1.4). Codes not listed fall back to the HTTP status.
_CODE_KINDS: dict[int, ErrorKind] = {
    3036: ErrorKind.QUOTA_EXHAUSTED,
    4006: ErrorKind.QUOTA_EXHAUSTED,
    3040: ErrorKind.RATE_LIMITED,
    10000: ErrorKind.AUTH,
    5016: ErrorKind.AUTH,
    3023: ErrorKind.AUTH,
    5018: ErrorKind.AUTH,
    3041: ErrorKind.AUTH,
    3007: ErrorKind.TIMEOUT,
    3046: ErrorKind.TIMEOUT,
    3008: ErrorKind.TIMEOUT,
    # "Could not route to ...": the account id (or the path) is wrong. An admin's setting, not
    # the user's request: AUTH is the kind whose advice sends them to the key settings.
    7000: ErrorKind.AUTH,
    7003: ErrorKind.AUTH,
    **dict.fromkeys(
        (5006, 5007, 5004, 3003, 3039, 3042, 5005, 5019, 3006), ErrorKind.BAD_REQUEST
    ),
}
_HINTS: dict[int, str] = dict.fromkeys(
    (7000, 7003),
    "Cloudflare could not route the request to this account: an administrator has to check "
    "the account id in the Cloudflare provider settings.",
)

_KIND_TEXT: dict[ErrorKind, str] = {
    ErrorKind.QUOTA_EXHAUSTED: "The daily Workers AI allocation is used up (it resets 00:00 UTC).",
    ErrorKind.RATE_LIMITED: "Workers AI is busy or rate limited.",
    ErrorKind.AUTH: "Workers AI refused the credentials or the model licence.",
    ErrorKind.TIMEOUT: "Workers AI timed out.",
    ErrorKind.BAD_REQUEST: "Workers AI rejected the request.",
    ErrorKind.CONTENT_FILTERED: "Workers AI's content moderation stopped this answer.",
    ErrorKind.UNAVAILABLE: "Workers AI failed.",
}


@dataclass(frozen=True)
class _Prepared:
    model: str
    url: str
    body: dict[str, Any]
    max_tokens: int

    @property
    def body_limit(self) -> int:
        """What a non-stream reply may hold: an error envelope, or a whole answer."""
        return 256 * 1024 if self.body.get("stream") else 8 * 1024 * 1024


class CloudflareClient(StreamingClient):
    kind = "cloudflare"
    name = NAME

    def __init__(self, config: ProviderConfig, *, retry_policy: RetryPolicy | None = None) -> None:
        self._account_id = self._credential(config.credentials, "account_id")
        self._api_token = self._credential(config.credentials, "api_token")
        if not _ACCOUNT_ID.fullmatch(self._account_id):
            raise ProviderError(ErrorKind.AUTH, f"The {NAME} account id is malformed.")
        self._setup(config, retry_policy, [self._api_token])

    # ---- request shaping ----------------------------------------------------------------

    def _prepare(self, request: ChatRequest) -> _Prepared:
        params = self._validated_params(request)
        max_tokens = int(params.pop("max_tokens", CLOUDFLARE_DEFAULT_MAX_TOKENS))
        image = _latest_image(request.messages) if "vision" in request.model else None
        body: dict[str, Any]
        if _uses_tools(request):
            body = {"messages": _messages(request)}
            if request.tools:
                body["tools"] = [_tool(t) for t in request.tools]
            if image is not None:
                body["image"] = list(image.data)
        elif image is None:
            body = {"messages": _messages(request)}
        else:
            body = {"prompt": _flatten(request), "image": list(image.data)}
        body.update(params, stream=not request.tools, max_tokens=max_tokens)
        url = f"{self._base_url}/accounts/{self._account_id}/ai/run/{request.model}"
        return _Prepared(model=request.model, url=url, body=body, max_tokens=max_tokens)

    # ---- one attempt ----------------------------------------------------------------------

    async def _attempt(self, prepared: _Prepared) -> AsyncGenerator[StreamItem, None]:
        sent_any = False
        try:
            async with aclosing(self._post(prepared)) as items:
                async for item in items:
                    sent_any = True
                    yield item
            return
        except ProviderError as error:
            if error.vendor_code != LICENCE_CODE or sent_any:
                raise
        await self._accept_licence(prepared)
        async with aclosing(self._post(prepared)) as items:
            async for item in items:
                yield item

    async def _post(self, prepared: _Prepared) -> AsyncGenerator[StreamItem, None]:
        guard = TransportErrors(NAME, self.config)
        with guard:
            async with self._http.stream(
                "POST", vendor_url(prepared.url), json=prepared.body, headers=self._headers()
            ) as response:
                guard.in_body = True
                if response.status_code == 200 and is_event_stream(response):
                    async with aclosing(self._read_stream(response, prepared)) as items:
                        async for item in items:
                            yield item
                    return
                body = await read_body_limited(response, prepared.body_limit)
        for item in self._read_plain(response, body, prepared):
            yield item

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._api_token}",
            "Accept": "text/event-stream, application/json",
        }

    async def _read_stream(
        self, response: httpx.Response, prepared: _Prepared
    ) -> AsyncGenerator[StreamItem, None]:
        decoder = SSEDecoder(max_event_bytes=self._max_event_bytes, provider=NAME)
        usage: Usage | None = None
        done = False
        calls = _Calls()
        events = aiter_events(response, decoder)
        async for event in events:
            data = event.data.strip()
            if data == "[DONE]":
                done = True
                await events.finish()  # the connection goes back to the pool
                break
            payload = json_object(data)
            if payload is None:
                if not event.complete or not data:
                    continue  # a cut-off last event: reported as truncated below
                raise ProviderError(
                    ErrorKind.UNAVAILABLE, f"{NAME} sent a malformed stream event."
                )
            if payload.get("errors"):
                raise self._error(response.status_code, payload, response.headers)
            text = payload.get("response")
            if isinstance(text, str) and text:
                yield Delta(text)
            calls.add(payload.get("tool_calls"))
            usage = _usage(payload.get("usage")) or usage
        if not done:
            raise ProviderError(
                ErrorKind.TRUNCATED,
                f"The answer from {NAME} stopped before it was complete.",
                request_id=response.headers.get("cf-ray"),
            )
        yield _finish(usage, prepared.max_tokens, response.headers.get("cf-ray"), calls.done())

    def _read_plain(
        self, response: httpx.Response, body: bytes, prepared: _Prepared
    ) -> list[StreamItem]:
        """A non-stream reply: an error envelope, or (defensively) a whole answer."""
        payload = json_object(body.decode("utf-8", errors="replace"))
        if response.status_code != 200 or payload is None or payload.get("success") is False:
            raise self._error(response.status_code, payload, response.headers)
        result = payload.get("result")
        result = result if isinstance(result, dict) else payload
        text = result.get("response")
        items: list[StreamItem] = [Delta(text)] if isinstance(text, str) and text else []
        usage = _usage(result.get("usage"))
        calls = _Calls()
        calls.add(result.get("tool_calls"))
        items.append(_finish(usage, prepared.max_tokens, response.headers.get("cf-ray"),
                             calls.done()))
        return items

    # ---- licence gate ---------------------------------------------------------------------

    async def _accept_licence(self, prepared: _Prepared) -> None:
        logger.info("%s: accepting the Meta licence for %s", NAME, prepared.model)
        guard = TransportErrors(NAME, self.config)
        with guard:
            response = await self._http.post(
                prepared.url, json={"prompt": "agree"}, headers=self._headers()
            )
        if response.status_code == 200:
            return
        payload = json_object(response.text)
        error = self._error(response.status_code, payload, response.headers)
        if _LICENCE_ACCEPTED_TEXT in _vendor_messages(payload).lower():
            return
        raise ProviderError(
            ErrorKind.AUTH,
            f"Could not accept the Meta licence for this model: {error.message}",
            vendor_code=error.vendor_code,
            request_id=error.request_id,
            status=error.status,
        )

    # ---- errors ---------------------------------------------------------------------------

    def _error(
        self, status: int, payload: dict[str, Any] | None, headers: httpx.Headers
    ) -> ProviderError:
        code, vendor_message = _first_error(payload)
        kind = _CODE_KINDS.get(code) if code is not None else None
        if kind is None and _MODERATION.search(vendor_message):
            kind = ErrorKind.CONTENT_FILTERED  # no documented code; recognised by its words
        kind = kind or _status_kind(status)
        match = _UUID_IN_PARENS.search(vendor_message)
        request_id = match.group(1) if match else headers.get("cf-ray")
        detail = safe_vendor_text(vendor_message, [self._api_token, self._account_id])
        message = _KIND_TEXT.get(kind, "Workers AI failed.")
        if detail:
            label = f"{code}: {detail}" if code is not None else detail
            message = f"{message} ({label})"
        retry_after = parse_retry_after(headers.get("retry-after"))
        return ProviderError(
            kind,
            message,
            vendor_code=str(code) if code is not None else None,
            request_id=request_id,
            status=status,
            retry_after=retry_after if kind is ErrorKind.RATE_LIMITED else None,
            hint=_HINTS.get(code) if code is not None else None,
        )


# ---- helpers ----------------------------------------------------------------------------


def _messages(request: ChatRequest) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": request.system}] if request.system else []
    messages += [{"role": m.role, "content": _content(m)} for m in request.messages]
    return messages


def _uses_tools(request: ChatRequest) -> bool:
    return bool(request.tools) or any(
        m.role == "tool" or m.tool_calls for m in request.messages)


def _content(message: Message) -> str:
    """A turn's text; an assistant turn's tool calls as Llama 3.2's JSON, after its text."""
    if not message.tool_calls:
        return message.text
    calls = [json.dumps({"name": c.name, "parameters": _arguments_object(c.arguments)},
                        ensure_ascii=False) for c in message.tool_calls]
    return "\n".join([message.text, *calls] if message.text else calls)


def _arguments_object(arguments: str) -> Any:
    try:
        return json.loads(arguments or "{}")
    except ValueError:
        return arguments


def _tool(tool: Tool) -> dict[str, Any]:
    """A tool in the vendor's schema: description required, on the tool and each parameter."""
    parameters = dict(tool.parameters) or {"type": "object", "properties": {}}
    parameters.setdefault("type", "object")
    properties = parameters.get("properties")
    parameters["properties"] = {
        name: {**spec, "description": spec.get("description") or name}
        for name, spec in (properties.items() if isinstance(properties, dict) else ())
        if isinstance(spec, dict)}
    return {"type": "function", "function": {
        "name": tool.name, "description": tool.description or tool.name,
        "parameters": parameters}}


class _Calls:
    """Tool calls read from a reply: whole (`name` + `arguments` object) or in OpenAI-style
    pieces (`index`, `function.name`, `function.arguments` text to append)."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}

    def add(self, value: Any) -> None:
        if not isinstance(value, list):
            return
        for position, item in enumerate(value):
            if not isinstance(item, dict):
                continue
            function: dict[str, Any] = (
                item["function"] if isinstance(item.get("function"), dict) else item)
            name, arguments = function.get("name"), function.get("arguments")
            index = item.get("index")
            if not isinstance(index, int):
                index = len(self._calls) if isinstance(name, str) and name else position
            call = self._calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
            if isinstance(item.get("id"), str) and item["id"]:
                call["id"] = item["id"]
            if isinstance(name, str) and name:
                call["name"] = name
            if isinstance(arguments, str):
                call["arguments"] += arguments
            elif arguments is not None:
                call["arguments"] += json.dumps(arguments, ensure_ascii=False)

    def done(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(id=call["id"] or f"call_{uuid.uuid4().hex[:24]}", name=call["name"],
                     arguments=call["arguments"] or "{}")
            for _index, call in sorted(self._calls.items()) if call["name"])


def _latest_image(messages: tuple[Message, ...]) -> ImagePart | None:
    for message in reversed(messages):
        if message.role == "user" and message.images:
            return message.images[-1]
    return None


_LABELS = {"user": "User", "assistant": "Assistant", "system": "System", "tool": "Tool"}


def _flatten(request: ChatRequest) -> str:
    """The conversation as one prompt; Cloudflare wraps it in the chat template as a user turn.

    A single user message is sent as-is; a longer history becomes a labelled transcript, oldest
    turns dropped first to fit the 131072-character prompt limit.
    """
    head = f"{request.system}\n\n" if request.system else ""
    if len(request.messages) == 1:
        turns = [request.messages[0].text]
    else:
        turns = [f"{_LABELS[m.role]}: {m.text}" for m in request.messages]
    while len(turns) > 1 and len(head) + sum(len(t) + 2 for t in turns) > MAX_PROMPT_CHARS:
        turns.pop(0)
    prompt = head + "\n\n".join(turns)
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ProviderError(
            ErrorKind.BAD_REQUEST,
            f"The message is too long for {NAME}: {len(prompt)} characters, "
            f"limit {MAX_PROMPT_CHARS}.",
            vendor_code="prompt_too_long",
        )
    return prompt or " "


def _first_error(payload: Mapping[str, Any] | None) -> tuple[int | None, str]:
    errors = payload.get("errors") if payload else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        code = first.get("code")
        code = int(code) if isinstance(code, int | str) and str(code).isdigit() else None
        return code, str(first.get("message") or "")
    return None, ""


def _vendor_messages(payload: Mapping[str, Any] | None) -> str:
    if not payload:
        return ""
    parts: list[str] = []
    for key in ("errors", "messages"):
        for entry in payload.get(key) or []:
            parts.append(str(entry.get("message", "")) if isinstance(entry, dict) else str(entry))
    result = payload.get("result")
    if isinstance(result, dict):
        parts.append(str(result.get("response", "")))
    return " ".join(parts)


def _status_kind(status: int) -> ErrorKind:
    if status in (401, 403):
        return ErrorKind.AUTH
    if status == 408:
        return ErrorKind.TIMEOUT
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if 400 <= status < 500:
        return ErrorKind.BAD_REQUEST
    return ErrorKind.UNAVAILABLE


def _usage(value: Any) -> Usage | None:
    if not isinstance(value, dict):
        return None
    prompt = value.get("prompt_tokens")
    completion = value.get("completion_tokens")
    return Usage(
        prompt_tokens=prompt if isinstance(prompt, int) else None,
        completion_tokens=completion if isinstance(completion, int) else None,
    )


def _finish(usage: Usage | None, max_tokens: int, request_id: str | None,
            tool_calls: tuple[ToolCall, ...] = ()) -> Finish:
    if tool_calls:
        return Finish(reason="tool_calls", usage=usage, request_id=request_id,
                      tool_calls=tool_calls)
    hit_limit = usage is not None and (usage.completion_tokens or 0) >= max_tokens
    return Finish(reason="length" if hit_limit else "stop", usage=usage, request_id=request_id)
