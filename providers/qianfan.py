"""Baidu Qianfan client (wenxinworkshop v1, Meta-Llama-3-70B-Instruct; providers.md section 3).

Access token: fetched from `/oauth/2.0/token` with the API key and secret key in the query
string, kept in a `TokenCache` (in-process by default; the app plugs in a shared one) under a
key that hashes the credentials, and renewed *before* it expires: the cache entry lives
`expires_in - min(10 %, 1 day)`. On error 110/111 (token invalid/expired), whether it comes as
a 200 JSON body, as a JSON body on a stream request, or inside the stream before the first
token, the token is refreshed once and the request retried once.

The token must travel in the query string (`?access_token=`); httpx logs request URLs, so
providers.redact scrubs it from every log record.

Message rules enforced here: the system prompt in its own field; roles alternate starting and
ending with `user` (consecutive same-role turns merged, so the count is odd); oldest turns are
dropped until content + system fit in 4800 characters; temperature is clamped into (0, 1]
(0 is sent as 0.01). The model is text-only: images are dropped, an image-only earlier turn
becomes "[image]".
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from providers.base import (
    ChatRequest,
    Delta,
    ErrorKind,
    Finish,
    ProviderConfig,
    ProviderError,
    StreamItem,
    Usage,
)
from providers.client import StreamingClient, json_object, vendor_url
from providers.redact import register_secret, safe_vendor_text
from providers.retry import (
    RetryPolicy,
    TransportErrors,
    is_event_stream,
    parse_retry_after,
    read_body_limited,
)
from providers.sse import SSEDecoder, aiter_events
from providers.tokens import TokenCount

logger = logging.getLogger("providers.qianfan")

NAME = "Qianfan"
CHAT_PATH = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/"
TOKEN_PATH = "/oauth/2.0/token"
MAX_INPUT_CHARS = 4800
MIN_TEMPERATURE = 0.01
# 110/111: the token is invalid or expired; 100: the access_token parameter is missing or
# malformed. All three are cured by a fresh token (refresh once, retry once).
TOKEN_ERROR_CODES = frozenset({100, 110, 111})
IMAGE_PLACEHOLDER = "[image]"
EARLIER_FLAGGED = (
    "Qianfan's moderation flagged an earlier message of this conversation, so it refuses every "
    "answer that includes it. Retry: the earlier message will be left out."
)
_DEFAULT_TOKEN_LIFETIME = 3600.0  # when the token reply has no usable expires_in

_CODE_KINDS: dict[int, ErrorKind] = {
    1: ErrorKind.UNAVAILABLE,
    2: ErrorKind.UNAVAILABLE,
    3: ErrorKind.BAD_REQUEST,
    4: ErrorKind.RATE_LIMITED,
    6: ErrorKind.AUTH,
    13: ErrorKind.AUTH,
    14: ErrorKind.AUTH,
    15: ErrorKind.UNAVAILABLE,
    17: ErrorKind.QUOTA_EXHAUSTED,
    18: ErrorKind.RATE_LIMITED,
    19: ErrorKind.QUOTA_EXHAUSTED,
    100: ErrorKind.AUTH,
    110: ErrorKind.AUTH,
    111: ErrorKind.AUTH,
    336000: ErrorKind.UNAVAILABLE,
    336100: ErrorKind.UNAVAILABLE,
    336004: ErrorKind.AUTH,
    336501: ErrorKind.RATE_LIMITED,
    336502: ErrorKind.RATE_LIMITED,
}

_KIND_TEXT: dict[ErrorKind, str] = {
    ErrorKind.QUOTA_EXHAUSTED: "The Qianfan quota is used up or the service is not paid for.",
    ErrorKind.RATE_LIMITED: "Qianfan is rate limiting requests.",
    ErrorKind.AUTH: "Qianfan refused the credentials.",
    ErrorKind.CONTENT_FILTERED: "Qianfan's content moderation stopped this answer.",
    ErrorKind.BAD_REQUEST: "Qianfan rejected the request.",
    ErrorKind.TIMEOUT: "Qianfan timed out.",
    ErrorKind.UNAVAILABLE: "Qianfan failed.",
}


# ---- token cache -------------------------------------------------------------------------


class TokenCache(Protocol):
    """Where access tokens live between requests (and, with a shared backend, processes)."""

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, ttl_seconds: float) -> None: ...


class InMemoryTokenCache:
    """Per-process TokenCache with expiry."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, tuple[str, float]] = {}

    async def get(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if self._clock() >= expires_at:
            del self._entries[key]
            return None
        return value

    async def set(self, key: str, value: str, ttl_seconds: float) -> None:
        self._entries[key] = (value, self._clock() + max(0.0, ttl_seconds))

    def __repr__(self) -> str:  # never show tokens
        return f"InMemoryTokenCache(entries={len(self._entries)})"


DEFAULT_TOKEN_CACHE = InMemoryTokenCache()


def token_cache_key(base_url: str, api_key: str, secret_key: str) -> str:
    """Cache key: a hash of where and who, so no credential is stored in clear as a key."""
    digest = hashlib.sha256(f"{base_url}\0{api_key}\0{secret_key}".encode()).hexdigest()
    return f"qianfan-access-token:{digest[:40]}"


def token_ttl(expires_in: float) -> float:
    """How long to keep a token: renew when less than 10 % (at most one day) is left."""
    return max(0.0, expires_in - min(expires_in * 0.1, 86_400.0))


class _TokenRejected(Exception):
    """110/111 before the first token: refresh once and retry (internal to this module)."""

    def __init__(self, error: ProviderError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True)
class _Prepared:
    url: str
    body: dict[str, Any]
    max_tokens: int | None = None  # the local output cap (estimated tokens)
    rounds: tuple[tuple[int, ...], ...] = ()  # per round sent: indexes into request.messages


class QianfanClient(StreamingClient):
    kind = "qianfan"
    name = NAME

    def __init__(
        self,
        config: ProviderConfig,
        *,
        token_cache: TokenCache | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self._api_key = self._credential(config.credentials, "api_key")
        self._secret_key = self._credential(config.credentials, "secret_key")
        self._setup(config, retry_policy, [self._api_key, self._secret_key])
        self._cache: TokenCache = token_cache if token_cache is not None else DEFAULT_TOKEN_CACHE
        self._cache_key = token_cache_key(self._base_url, self._api_key, self._secret_key)
        self._token_lock = asyncio.Lock()

    # ---- request shaping ----------------------------------------------------------------

    def _prepare(self, request: ChatRequest) -> _Prepared:
        params = self._validated_params(request)
        if "temperature" in params:
            params["temperature"] = min(1.0, max(MIN_TEMPERATURE, params["temperature"]))
        # Ours, not the vendor's: this model has no output-length parameter (providers.md 3.2).
        max_tokens = params.pop("max_tokens", None)
        system, messages, rounds = shape_messages(request)
        body: dict[str, Any] = {"messages": messages, "stream": True, **params}
        if system:
            body["system"] = system
        return _Prepared(url=self._base_url + CHAT_PATH + request.model, body=body,
                         max_tokens=max_tokens, rounds=rounds)

    # ---- access token ---------------------------------------------------------------------

    async def _token(self, *, rejected: str | None = None) -> str:
        """A usable token; `rejected` is one the API just refused (never handed out again)."""
        async with self._token_lock:
            cached = await self._cache.get(self._cache_key)
            if cached and cached != rejected:
                register_secret(cached)
                return cached
            return await self._fetch_token()

    async def _fetch_token(self) -> str:
        logger.info("%s: requesting a new access token", NAME)
        params = {
            "grant_type": "client_credentials",
            "client_id": self._api_key,
            "client_secret": self._secret_key,
        }
        with TransportErrors(NAME, self.config):
            response = await self._http.post(
                self._base_url + TOKEN_PATH,
                params=params,
                headers={"Content-Type": "application/json"},
            )
        payload = json_object(response.text) or {}
        token = payload.get("access_token")
        if response.status_code == 200 and isinstance(token, str) and token:
            register_secret(token)
            expires_in = payload.get("expires_in")
            lifetime = (
                float(expires_in)
                if isinstance(expires_in, int | float) and expires_in > 0
                else _DEFAULT_TOKEN_LIFETIME
            )
            await self._cache.set(self._cache_key, token, token_ttl(lifetime))
            return token
        raise self._token_error(response.status_code, payload)

    def _token_error(self, status: int, payload: Mapping[str, Any]) -> ProviderError:
        code = str(payload.get("error") or payload.get("error_code") or "") or None
        detail = safe_vendor_text(
            payload.get("error_description") or payload.get("error_msg") or "", self._secrets()
        )
        kind = ErrorKind.UNAVAILABLE if status >= 500 else ErrorKind.AUTH
        message = (
            "Qianfan could not issue an access token."
            if kind is ErrorKind.UNAVAILABLE
            else "Qianfan refused the API key or secret key."
        )
        if detail or code:
            message += f" ({': '.join(p for p in (code, detail) if p)})"
        return ProviderError(kind, message, vendor_code=code, status=status)

    # ---- one attempt ----------------------------------------------------------------------

    async def _attempt(self, prepared: _Prepared) -> AsyncGenerator[StreamItem, None]:
        token = await self._token()
        try:
            async with aclosing(self._post(prepared, token)) as items:
                async for item in items:
                    yield item
            return
        except _TokenRejected:
            logger.info("%s: access token rejected; refreshing once", NAME)
        token = await self._token(rejected=token)
        try:
            async with aclosing(self._post(prepared, token)) as items:
                async for item in items:
                    yield item
        except _TokenRejected as again:
            raise again.error from None

    async def _post(self, prepared: _Prepared, token: str) -> AsyncGenerator[StreamItem, None]:
        guard = TransportErrors(NAME, self.config)
        with guard:
            async with self._http.stream(
                "POST",
                vendor_url(prepared.url),
                params={"access_token": token},
                json=prepared.body,
                headers={"Accept": "text/event-stream, application/json"},
            ) as response:
                guard.in_body = True
                content_type = response.headers.get("content-type", "").lower()
                if (
                    response.status_code == 200
                    and is_event_stream(response)
                    and "json" not in content_type
                ):
                    async with aclosing(self._read_stream(response, prepared)) as items:
                        async for item in items:
                            yield item
                    return
                body = await read_body_limited(response)
        for item in self._read_plain(response, body, prepared):
            yield item

    async def _read_stream(self, response: httpx.Response, prepared: _Prepared
                           ) -> AsyncGenerator[StreamItem, None]:
        decoder = SSEDecoder(
            max_event_bytes=self._max_event_bytes, keep_other_lines=True, provider=NAME
        )
        text_sent = False
        written = TokenCount()  # for the local output cap
        usage: Usage | None = None
        request_id: str | None = None
        events = aiter_events(response, decoder)
        async for event in events:
            # A bare JSON line inside the stream is an error object (the SDK reads it so too).
            for line in event.other_lines:
                stray = json_object(line)
                if stray is not None and "error_code" in stray:
                    raise self._error(stray, response, text_sent=text_sent, request_id=request_id)
            data = event.data.strip()
            if not data:
                continue
            if data == "[DONE]":  # not sent by v1; accepted as a clean end if it ever is
                await events.finish()  # the connection goes back to the pool
                yield Finish(reason="stop", usage=usage, request_id=request_id)
                return
            payload = json_object(data)
            if payload is None:
                if event.complete:
                    raise ProviderError(
                        ErrorKind.UNAVAILABLE, f"{NAME} sent a malformed stream event."
                    )
                continue
            if "error_code" in payload:
                raise self._error(payload, response, text_sent=text_sent, request_id=request_id)
            request_id = str(payload.get("id") or "") or request_id
            usage = _usage(payload.get("usage")) or usage
            if payload.get("need_clear_history"):
                raise _content_filtered(request_id, payload.get("ban_round"), prepared)
            text = payload.get("result")
            if isinstance(text, str) and text:
                text_sent = True
                if prepared.max_tokens is not None:
                    text, capped = _cap(written, text, prepared.max_tokens)
                    written.add(text)
                    if capped:
                        # Stop reading: leaving this block closes the upstream response.
                        if text:
                            yield Delta(text)
                        yield Finish(reason="length", usage=usage, request_id=request_id)
                        return
                yield Delta(text)
            if payload.get("is_end") is True:
                reason = "length" if payload.get("is_truncated") else "stop"
                await events.finish()  # the connection goes back to the pool
                yield Finish(reason=reason, usage=usage, request_id=request_id)
                return
        raise ProviderError(
            ErrorKind.TRUNCATED,
            f"The answer from {NAME} stopped before it was complete.",
            request_id=request_id,
        )

    def _read_plain(self, response: httpx.Response, body: bytes, prepared: _Prepared
                    ) -> list[StreamItem]:
        """JSON reply to a stream request: nearly always an error (providers.md 3.4)."""
        payload = json_object(body.decode("utf-8", errors="replace"))
        if payload is not None and "error_code" in payload:
            raise self._error(payload, response, text_sent=False)
        if response.status_code != 200 or payload is None:
            raise self._status_error(response)
        request_id = str(payload.get("id") or "") or None
        if payload.get("need_clear_history"):
            raise _content_filtered(request_id, payload.get("ban_round"), prepared)
        text = payload.get("result")
        text = text if isinstance(text, str) else ""
        capped = False
        if prepared.max_tokens is not None:
            text, capped = _cap(TokenCount(), text, prepared.max_tokens)
        items: list[StreamItem] = [Delta(text)] if text else []
        reason = "length" if payload.get("is_truncated") or capped else "stop"
        usage = _usage(payload.get("usage"))
        items.append(Finish(reason=reason, usage=usage, request_id=request_id))
        return items

    # ---- errors ---------------------------------------------------------------------------

    def _secrets(self) -> list[str]:
        return [self._api_key, self._secret_key]

    def _error(
        self,
        payload: Mapping[str, Any],
        response: httpx.Response,
        *,
        text_sent: bool,
        request_id: str | None = None,
    ) -> ProviderError | _TokenRejected:
        """The error for an `error_code` body; `request_id` is the stream's id seen so far."""
        raw_code = str(payload.get("error_code"))
        code = int(raw_code) if raw_code.isdigit() else None
        kind = _CODE_KINDS.get(code) if code is not None else None
        if kind is None:
            # 3360xx and 3361xx are faults of the request (336100, overload, is listed above):
            # retrying the same request is useless.
            client_fault = code is not None and 336001 <= code <= 336199
            kind = ErrorKind.BAD_REQUEST if client_fault else ErrorKind.UNAVAILABLE
        detail = safe_vendor_text(payload.get("error_msg") or "", self._secrets())
        message = _KIND_TEXT[kind]
        if code is not None or detail:
            message += f" ({': '.join(str(p) for p in (code, detail) if p)})"
        error = ProviderError(
            kind,
            message,
            vendor_code=str(code) if code is not None else None,
            request_id=str(payload.get("id") or "") or request_id or _header_request_id(response),
            status=response.status_code,
            retry_after=(
                parse_retry_after(response.headers.get("retry-after"))
                if kind is ErrorKind.RATE_LIMITED
                else None
            ),
        )
        if code in TOKEN_ERROR_CODES:
            if not text_sent:
                return _TokenRejected(error)
            # Cannot retry after text was shown; the next request refreshes the token.
            error.kind = ErrorKind.UNAVAILABLE
        return error

    def _status_error(self, response: httpx.Response) -> ProviderError:
        status = response.status_code
        if status in (401, 403):
            kind = ErrorKind.AUTH
        elif status == 429:
            kind = ErrorKind.RATE_LIMITED
        elif 400 <= status < 500:
            kind = ErrorKind.BAD_REQUEST
        else:
            kind = ErrorKind.UNAVAILABLE
        return ProviderError(
            kind,
            f"{_KIND_TEXT[kind]} (HTTP {status})",
            status=status,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )


# ---- helpers ----------------------------------------------------------------------------


def shape_messages(
    request: ChatRequest,
) -> tuple[str, list[dict[str, str]], tuple[tuple[int, ...], ...]]:
    """(system, messages, rounds) following Qianfan's rules; see the module docstring.

    `rounds[k]` lists the indexes into `request.messages` that round k (messages 2k and 2k+1
    sent) was made of, so a `ban_round` can be traced back to the turns it flagged.
    """
    last = request.messages[-1] if request.messages else None
    if last is None or last.role != "user" or not last.text.strip():
        raise ProviderError(
            ErrorKind.BAD_REQUEST,
            f"{NAME}'s model reads text only, and the last message has no text to answer.",
            vendor_code="empty_message",
        )
    system_parts = [request.system] if request.system else []
    turns: list[dict[str, str]] = []
    sources: list[list[int]] = []
    for index, message in enumerate(request.messages):
        if message.role == "system":
            system_parts.append(message.text)
            continue
        text = message.text
        if not text.strip():
            if message.role != "user" or not message.images:
                continue  # e.g. an empty assistant turn left by a failed attempt
            text = IMAGE_PLACEHOLDER
        if turns and turns[-1]["role"] == message.role:
            turns[-1]["content"] += "\n\n" + text
            sources[-1].append(index)
        else:
            turns.append({"role": message.role, "content": text})
            sources.append([index])
    while turns[0]["role"] != "user":  # the last turn is a user turn, so this stops
        turns.pop(0)
        sources.pop(0)
    system = "\n\n".join(p for p in system_parts if p)
    turns, sources = _fit_budget(system, turns, sources)
    rounds = tuple(tuple(sources[i] + (sources[i + 1] if i + 1 < len(sources) else []))
                   for i in range(0, len(sources), 2))
    return system, turns, rounds


def _fit_budget(system: str, turns: list[dict[str, str]], sources: list[list[int]]
                ) -> tuple[list[dict[str, str]], list[list[int]]]:
    """Drop the oldest user/assistant pairs until content + system fit in 4800 characters."""

    def size() -> int:
        return len(system) + sum(len(t["content"]) for t in turns)

    while len(turns) > 1 and size() > MAX_INPUT_CHARS:
        del turns[:2]
        del sources[:2]
    if size() > MAX_INPUT_CHARS:
        raise ProviderError(
            ErrorKind.BAD_REQUEST,
            f"The message is too long for {NAME}: {size()} characters including the system "
            f"prompt, limit {MAX_INPUT_CHARS}.",
            vendor_code="input_too_long",
        )
    return turns, sources


def _cap(written: TokenCount, text: str, max_tokens: int) -> tuple[str, bool]:
    """The part of `text` that keeps the answer within `max_tokens` (estimated), and whether
    the cap was reached. Costs one look at `text`, not at the whole answer."""
    if written.with_text(text) <= max_tokens:
        return text, False
    low, high = 0, len(text)  # the longest prefix that still fits
    while low < high:
        middle = (low + high + 1) // 2
        if written.with_text(text[:middle]) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    return text[:low], True


def _header_request_id(response: httpx.Response) -> str | None:
    # UNCONFIRMED which header Baidu uses; these are the BCE gateway's usual names.
    for name in ("x-bce-request-id", "x-request-id"):
        if response.headers.get(name):
            return response.headers[name]
    return None


def _content_filtered(request_id: str | None, ban_round: Any, prepared: _Prepared
                      ) -> ProviderError:
    """`need_clear_history`: moderation flagged the current turn (`ban_round` -1 or absent) or
    an earlier round; then every later request would be refused too, so the error names the
    turns (indexes into the request's messages) for the caller to leave out."""
    flagged: list[int] = []
    if isinstance(ban_round, int) and not isinstance(ban_round, bool) and 0 <= ban_round < len(
            prepared.rounds) - 1:  # UNCONFIRMED: rounds counted from 0 over the turns sent
        flagged = list(prepared.rounds[ban_round])
    hint = EARLIER_FLAGGED if flagged else None
    return ProviderError(
        ErrorKind.CONTENT_FILTERED,
        _KIND_TEXT[ErrorKind.CONTENT_FILTERED],
        vendor_code="need_clear_history",
        request_id=request_id,
        hint=hint,
        details={"flagged_messages": flagged, "ban_round": ban_round},
    )


def _usage(value: Any) -> Usage | None:
    if not isinstance(value, dict):
        return None
    prompt = value.get("prompt_tokens")
    completion = value.get("completion_tokens")
    return Usage(
        prompt_tokens=prompt if isinstance(prompt, int) else None,
        completion_tokens=completion if isinstance(completion, int) else None,
    )
