"""Retries, timeouts and transport-error translation shared by the three clients.

Retry rule: a failed attempt is retried only if (1) no Delta has been yielded yet, because a
retry after text would duplicate or contradict what the user already saw, (2) the error kind is
retryable, (3) attempts remain, and (4) any `retry_after` the vendor asked for is at most
`max_retry_after` (a longer wait ends in the error, so the user can decide). Otherwise the delay
is exponential backoff with full jitter: uniform(0, min(max_delay, base_delay * 2**n)).
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import random
import ssl
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import certifi
import httpx

from providers.base import Delta, ErrorKind, ProviderConfig, ProviderError, StreamItem
from providers.transport import VendorTransport

logger = logging.getLogger("providers.retry")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 30.0

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RetryPolicy:
        """Read overrides from ProviderConfig.options (`max_attempts`, `retry_base_delay`, ...)."""
        default = cls()
        return cls(
            max_attempts=max(1, int(options.get("max_attempts", default.max_attempts))),
            base_delay=float(options.get("retry_base_delay", default.base_delay)),
            max_delay=float(options.get("retry_max_delay", default.max_delay)),
            max_retry_after=float(options.get("max_retry_after", default.max_retry_after)),
        )

    def delay_before_retry(
        self, failed_attempts: int, retry_after: float | None, rand: Callable[[], float]
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        if failed_attempts >= self.max_attempts:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after else None
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (failed_attempts - 1))
        return rand() * ceiling


AttemptFactory = Callable[[], AsyncGenerator[StreamItem, None]]


async def stream_with_retries(
    attempt: AttemptFactory,
    policy: RetryPolicy,
    *,
    provider: str,
    max_answer_chars: int | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
) -> AsyncGenerator[StreamItem, None]:
    """Run `attempt()` until it succeeds, following the module's retry rule.

    `max_answer_chars` caps one answer (threat T23): a provider that never stops is cut off
    with ProviderError(BAD_REQUEST, vendor_code="answer_too_long").
    """
    failed = 0
    while True:
        text_sent = False
        answer_chars = 0
        items = attempt()
        try:
            async for item in items:
                if isinstance(item, Delta):
                    text_sent = True
                    answer_chars += len(item.text)
                    if max_answer_chars is not None and answer_chars > max_answer_chars:
                        raise _answer_too_long(provider, max_answer_chars)
                yield item
            return
        except ProviderError as error:
            failed += 1
            delay = None
            if not text_sent and error.retryable:
                delay = policy.delay_before_retry(failed, error.retry_after, rand)
            if delay is None:
                raise
            logger.info(
                "%s attempt %d failed (%s, code %s); retrying in %.2f s",
                provider, failed, error.kind.value, error.vendor_code, delay,
            )
        finally:
            await items.aclose()
        await sleep(delay)


def _answer_too_long(provider: str, limit: int) -> ProviderError:
    return ProviderError(
        ErrorKind.BAD_REQUEST,
        f"The answer from {provider} grew past {limit} characters and was stopped.",
        vendor_code="answer_too_long",
    )


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if seconds == seconds else None  # NaN check


def make_timeout(config: ProviderConfig) -> httpx.Timeout:
    """connect = connect_timeout; read = the idle gap allowed between two received bytes."""
    return httpx.Timeout(
        connect=config.connect_timeout,
        read=config.read_timeout,
        write=config.read_timeout,
        pool=config.connect_timeout,
    )


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Building an SSL context loads the CA bundle: ~20 ms of CPU and ~700 KiB each time. One per
    # process serves every client (it is only read after creation).
    return ssl.create_default_context(cafile=certifi.where())


def make_http_client(config: ProviderConfig, *,
                     limits: httpx.Limits | None = None) -> httpx.AsyncClient:
    # trust_env=False: a proxy or netrc from the environment must not receive provider keys.
    if limits is None:  # httpx's own default: 100 connections, 20 kept alive for 5 s
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
    # The transport is httpx's own on a lighter network layer (providers/transport.py); it
    # carries the TLS context and the limits.
    transport = VendorTransport(ssl_context=_tls_context(), limits=limits)
    return httpx.AsyncClient(timeout=make_timeout(config), trust_env=False, follow_redirects=False,
                             transport=transport)


class TransportErrors:
    """Context manager turning httpx exceptions into ProviderError.

    Set `in_body = True` once response headers arrived: a connection lost while the body is
    being read is a truncated answer, not an unreachable service.
    """

    def __init__(self, provider: str, config: ProviderConfig) -> None:
        self.provider = provider
        self.config = config
        self.in_body = False

    def __enter__(self) -> TransportErrors:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or not isinstance(exc, httpx.HTTPError):
            return
        # `from None`: httpx messages and request objects can carry the URL (and with Qianfan,
        # the token in its query string); they must not ride along in a traceback.
        raise self._translate(exc) from None

    def _translate(self, exc: httpx.HTTPError) -> ProviderError:
        name = type(exc).__name__
        if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
            return ProviderError(
                ErrorKind.TIMEOUT,
                f"Could not connect to {self.provider} within {self.config.connect_timeout:g} s.",
                vendor_code=name,
            )
        if isinstance(exc, httpx.TimeoutException):
            return ProviderError(
                ErrorKind.TIMEOUT,
                f"{self.provider} sent nothing for {self.config.read_timeout:g} s; "
                "the request was abandoned.",
                vendor_code=name,
            )
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
            return ProviderError(
                ErrorKind.BAD_REQUEST,
                f"The {self.provider} base URL is not a valid http(s) URL.",
                vendor_code=name,
            )
        if self.in_body:
            return ProviderError(
                ErrorKind.TRUNCATED,
                f"The connection to {self.provider} was lost before the answer was complete.",
                vendor_code=name,
            )
        return ProviderError(
            ErrorKind.UNAVAILABLE, f"Could not reach {self.provider}.", vendor_code=name
        )


async def read_body_limited(response: httpx.Response, limit: int = 256 * 1024) -> bytes:
    """At most `limit` bytes of a (non-stream) body; error bodies are small, a huge one is cut."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk[: limit - len(body)]
        if len(body) >= limit:
            break
    return bytes(body)


def is_event_stream(response: httpx.Response) -> bool:
    return "text/event-stream" in response.headers.get("content-type", "").lower()
