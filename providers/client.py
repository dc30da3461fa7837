"""What the three HTTP clients share: setup, the retrying stream, closing.

A vendor module supplies `_prepare` (validate and shape a request, before any network call)
and `_attempt` (one HTTP exchange yielding deltas and a Finish).
"""

from __future__ import annotations

import abc
import functools
import json
import json.scanner
from collections.abc import AsyncGenerator, Iterable, Mapping
from contextlib import aclosing
from typing import Any, ClassVar

import httpx

from providers.base import (
    ChatRequest,
    ErrorKind,
    Finish,
    ProviderConfig,
    ProviderError,
    StreamItem,
    collect,
)
from providers.catalogue import MODEL_PROVIDER
from providers.params import validate_params
from providers.pool import http_client
from providers.redact import install_log_redaction, register_secret
from providers.retry import RetryPolicy, stream_with_retries
from providers.sse import DEFAULT_MAX_EVENT_BYTES

# The C scanner under `json.loads`, for a stream event's usual text: `{...}` with nothing
# around it. `json.loads` adds two regular-expression scans and three Python frames around the
# scanner: 1.27 µs per token's event against the scanner's 0.32, in-process (issue 16).
# (typeshed names the scanner's argument after the class, not the decoder it takes.)
_scan_once = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


@functools.lru_cache(maxsize=256)
def vendor_url(text: str) -> httpx.URL:
    """A vendor endpoint's URL, parsed once: httpx parses a string URL on every request (25 of
    the 86 µs it takes to build one, in-process; issue 16). Query parameters, which may hold a
    token, are not part of it: they are passed to the request."""
    return httpx.URL(text)


def json_object(text: str) -> dict[str, Any] | None:
    """`text` parsed as a JSON object, or None (vendors send errors in many shapes)."""
    if text[:1] == "{" and text[-1:] == "}":
        try:
            value, end = _scan_once(text, 0)
        except (StopIteration, ValueError):
            return None
        # Anything after the object is an error to `json.loads`: None here as well.
        return value if end == len(text) and isinstance(value, dict) else None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class StreamingClient(abc.ABC):
    kind: ClassVar[str]
    name: ClassVar[str]  # the vendor's name in messages shown to users

    def _credential(self, credentials: Mapping[str, str], key: str) -> str:
        value = credentials.get(key)
        if not value:
            raise ProviderError(ErrorKind.AUTH, f"The {self.name} credential {key!r} is not set.")
        return value

    def _setup(self, config: ProviderConfig, retry_policy: RetryPolicy | None,
               secrets: Iterable[str]) -> None:
        self.config = config
        for secret in secrets:
            register_secret(secret)
        install_log_redaction()
        self._base_url = config.base_url.rstrip("/")
        self._policy = retry_policy or RetryPolicy.from_options(config.options)
        self._max_event_bytes = int(config.options.get("max_event_bytes", DEFAULT_MAX_EVENT_BYTES))
        self._max_answer_chars = int(config.options.get("max_answer_chars", 400_000))
        # Shared and kept warm in the server's loop (providers/pool.py); private elsewhere.
        self._http, self._shared_http = http_client(config)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        """Deltas then exactly one Finish; ProviderError on failure (before any network call
        for a bad request)."""
        prepared = self._prepare(request)
        retrying = stream_with_retries(
            lambda: self._attempt(prepared),
            self._policy,
            provider=self.name,
            max_answer_chars=self._max_answer_chars,
        )
        async with aclosing(retrying):
            async for item in retrying:
                yield item

    async def complete(self, request: ChatRequest) -> tuple[str, Finish]:
        async with aclosing(self.stream(request)) as items:
            return await collect(items)

    async def aclose(self) -> None:
        """Release the client: a private HTTP client is closed, a shared one stays warm."""
        if not self._shared_http:
            await self._http.aclose()

    def _validated_params(self, request: ChatRequest) -> dict[str, Any]:
        """The request's parameters, checked against its model, which must be ours."""
        if MODEL_PROVIDER.get(request.model) != self.kind:
            raise ProviderError(ErrorKind.BAD_REQUEST,
                                f"{request.model!r} is not a {self.name} model.")
        return validate_params(request.model, request.params)

    @abc.abstractmethod
    def _prepare(self, request: ChatRequest) -> Any:
        """Validate and shape the request; raise ProviderError before any network call."""

    @abc.abstractmethod
    def _attempt(self, prepared: Any) -> AsyncGenerator[StreamItem, None]:
        """One HTTP exchange: deltas, then a Finish, or ProviderError."""
