from __future__ import annotations

import email.utils
import logging
import time
import uuid
from collections.abc import AsyncGenerator

import pytest

from providers.base import Delta, ErrorKind, Finish, ProviderError, StreamItem
from providers.redact import (
    REDACTED,
    RedactingFilter,
    install_log_redaction,
    register_secret,
    scrub,
)
from providers.retry import RetryPolicy, parse_retry_after, stream_with_retries


class Script:
    """Attempts that fail as scripted, then succeed; counts how often it was started."""

    def __init__(self, *outcomes: ProviderError | tuple[str, ProviderError] | None) -> None:
        self.outcomes = list(outcomes)
        self.started = 0

    async def attempt(self) -> AsyncGenerator[StreamItem, None]:
        self.started += 1
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if isinstance(outcome, tuple):
            yield Delta(outcome[0])
            raise outcome[1]
        if isinstance(outcome, ProviderError):
            raise outcome
        yield Delta("ok")
        yield Finish(reason="stop")


async def run(
    script: Script, policy: RetryPolicy, **kwargs: object
) -> tuple[list[StreamItem], list[float], ProviderError | None]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    items: list[StreamItem] = []
    try:
        async for item in stream_with_retries(
            script.attempt, policy, provider="Test", sleep=sleep, rand=lambda: 1.0, **kwargs
        ):
            items.append(item)
    except ProviderError as error:
        return items, slept, error
    return items, slept, None


def busy(retry_after: float | None = None) -> ProviderError:
    return ProviderError(ErrorKind.RATE_LIMITED, "busy", retry_after=retry_after)


@pytest.mark.asyncio
async def test_it_retries_retryable_errors_with_exponential_backoff() -> None:
    script = Script(busy(), ProviderError(ErrorKind.UNAVAILABLE, "down"))
    items, slept, error = await run(script, RetryPolicy(base_delay=0.5, max_delay=8))
    assert error is None
    assert script.started == 3
    assert slept == [0.5, 1.0]  # full jitter with rand() == 1.0 hits the ceiling
    assert items == [Delta("ok"), Finish(reason="stop")]


@pytest.mark.asyncio
async def test_it_gives_up_after_max_attempts() -> None:
    script = Script(busy(), busy(), busy(), busy())
    _, slept, error = await run(script, RetryPolicy(max_attempts=3))
    assert error is not None and error.kind is ErrorKind.RATE_LIMITED
    assert script.started == 3
    assert len(slept) == 2


@pytest.mark.asyncio
async def test_it_never_retries_after_text_was_yielded() -> None:
    script = Script(("partial", ProviderError(ErrorKind.UNAVAILABLE, "boom")))
    items, slept, error = await run(script, RetryPolicy())
    assert items == [Delta("partial")]
    assert error is not None and error.kind is ErrorKind.UNAVAILABLE
    assert script.started == 1
    assert slept == []


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "kind",
    [ErrorKind.AUTH, ErrorKind.BAD_REQUEST, ErrorKind.QUOTA_EXHAUSTED, ErrorKind.CONTENT_FILTERED],
)
async def test_it_does_not_retry_permanent_errors(kind: ErrorKind) -> None:
    script = Script(ProviderError(kind, "no"))
    _, _, error = await run(script, RetryPolicy())
    assert error is not None and error.kind is kind
    assert script.started == 1


@pytest.mark.asyncio
async def test_it_waits_the_retry_after_the_vendor_asked_for() -> None:
    script = Script(busy(retry_after=2.5))
    _, slept, error = await run(script, RetryPolicy(max_retry_after=30))
    assert error is None
    assert slept == [2.5]


@pytest.mark.asyncio
async def test_a_retry_after_longer_than_the_cap_ends_in_the_error() -> None:
    script = Script(busy(retry_after=120))
    _, slept, error = await run(script, RetryPolicy(max_retry_after=30))
    assert error is not None and error.retry_after == 120
    assert script.started == 1
    assert slept == []


@pytest.mark.asyncio
async def test_it_stops_an_answer_that_grows_past_the_cap() -> None:
    script = Script()
    items, _, error = await run(script, RetryPolicy(), max_answer_chars=1)
    assert error is not None and error.vendor_code == "answer_too_long"
    assert items == []


def test_retry_policy_reads_overrides_from_provider_options() -> None:
    policy = RetryPolicy.from_options({"max_attempts": 5, "retry_base_delay": 0.01})
    assert (policy.max_attempts, policy.base_delay, policy.max_retry_after) == (5, 0.01, 30.0)


def test_it_parses_retry_after_seconds_and_http_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    future = email.utils.formatdate(time.time() + 60, usegmt=True)
    seconds = parse_retry_after(future)
    assert seconds is not None and 50 < seconds <= 60


def test_scrub_removes_query_credentials_bearer_tokens_and_registered_secrets() -> None:
    register_secret("very-secret-value-42")
    text = (
        "POST http://h/x?access_token=24.abc.def&client_id=AK1&client_secret=SK2&page=1 "
        "Authorization: Bearer sk-live-123 and very-secret-value-42"
    )
    clean = scrub(text)
    for secret in ("24.abc.def", "AK1", "SK2", "sk-live-123", "very-secret-value-42"):
        assert secret not in clean
    assert "page=1" in clean
    assert clean.count(REDACTED) == 5


def test_a_vendor_logger_made_after_a_client_is_filtered_by_the_next_client() -> None:
    install_log_redaction()
    late = logging.getLogger(f"httpcore.late-{uuid.uuid4().hex}")  # httpx names them lazily
    install_log_redaction()  # what every new client does: one check while no logger is new
    assert any(isinstance(f, RedactingFilter) for f in late.filters)
    install_log_redaction()
    assert sum(isinstance(f, RedactingFilter) for f in late.filters) == 1


def test_the_log_filter_scrubs_httpx_request_lines(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    for name in (None, "httpx", "httpcore"):  # the project settings quieten httpx
        caplog.set_level(logging.DEBUG, logger=name)
    logging.getLogger("httpx").info(
        'HTTP Request: %s %s "%s"', "POST", "http://h/chat?access_token=24.tok.en", "200 OK"
    )
    logging.getLogger("httpcore.http11").debug("Authorization: Bearer abc.def")
    text = "\n".join(caplog.messages)
    assert "24.tok.en" not in text
    assert "abc.def" not in text
    assert "access_token=[" in text  # the project's handler filter may re-redact in lower case
