"""The answer core: one provider stream becomes one answer, for the web page and `/v1` alike.

An `Answer` is given what to write (the model's provider account and a `ChatRequest` whose
history is already shaped) and owns everything between the vendor and our ledger:

- it builds the vendor client (retries live in the client: providers/retry.py), streams, and
  keeps the text and the timings (time to first token, duration);
- it turns how the stream ended into an `Outcome` with the product's rules: a filtered answer
  is an ending, not a transport error (F22); a stream without its finish is `truncated`; our own
  failures are `internal`; every failure carries a message a user can act on;
- it settles usage once: the provider's figures, or an estimate when there are none (a stopped
  or failed answer was still charged by the vendor, T22);
- it persists the outcome through the caller's `save` with retries while the database is away
  (F17): the final write must land.

The two doors are thin adapters: `answers/runner.py` turns the deltas into channel-layer
events and saves the message row; `api/completions.py` turns them into OpenAI chunks. Both
write the same ledger row (`usage.accounting.record_outcome`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from django.core.exceptions import ValidationError

from conversations.answers.fallback import curable
from conversations.errors import (
    INTERNAL,
    INTERRUPTED,
    NOT_CONFIGURED,
    PROVIDER_FAILURES,
    UNREADABLE_KEY,
)
from conversations.models import MessageStatus, UsageRecord
from conversations.runtime import off_loop
from conversations.usage import accounting
from providers import breaker, crypto
from providers import status as provider_status
from providers.base import ChatRequest, Delta, ErrorKind, Finish, ProviderClient, ProviderError
from providers.models import ModelConfig, Provider
from providers.services import client_for
from providers.tokens import estimate_message_tokens, estimate_tokens

log = logging.getLogger(__name__)

# What a user reads when an answer failed, by error kind (the partial text is kept). Stored in
# English with the code; the page draws it in the reader's language (errors.answer_error_text).
FAILURE_MESSAGES = {kind: PROVIDER_FAILURES[kind.value] for kind in ErrorKind
                    if kind.value in PROVIDER_FAILURES}


def prompt_tokens(request: ChatRequest) -> int:
    """The estimate of what a request's input cost (providers/tokens.py)."""
    return estimate_tokens(request.system) + sum(
        estimate_message_tokens(m.text, len(m.images)) for m in request.messages)


def failure_message(exc: ProviderError) -> str:
    """What a reader of a failed answer should know and do."""
    if exc.hint:  # the client knows better than the kind's generic advice
        return exc.hint
    # A bad request's own message names the parameter or limit the vendor refused.
    if exc.kind == ErrorKind.BAD_REQUEST:
        return exc.message
    return FAILURE_MESSAGES.get(exc.kind, exc.message)


@dataclass(frozen=True)
class Outcome:
    """How an answer ended: the fields the message row and the ledger row store."""

    status: str  # complete | stopped | failed | interrupted (MessageStatus values)
    text: str = ""
    finish_reason: str = ""
    error_code: str = ""
    error_message: str = ""
    request_id: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: int | None = None
    duration_ms: int | None = None
    error: ProviderError | None = None  # what a door may shape its own error from

    @property
    def filtered(self) -> bool:
        return self.finish_reason == "content_filter"


class Answer:
    """One provider stream for one answer, and the rules of how it ends."""

    def __init__(self, provider: Provider, request: ChatRequest) -> None:
        self.provider = provider
        self.request = request
        self.started = time.monotonic()
        self.first_token: float | None = None
        self.finish: Finish | None = None
        self._parts: list[str] = []
        self.length = 0  # characters received so far

    # --- the text -------------------------------------------------------------------------------
    @property
    def text(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def _apply(self, delta: Delta) -> None:
        if self.first_token is None:
            self.first_token = time.monotonic()
        if delta.rewind:
            text = self.text
            self._parts = [text[: max(0, len(text) - delta.rewind)]]
            self.length = len(self._parts[0])
        self._parts.append(delta.text)
        self.length += len(delta.text)

    # --- the stream -----------------------------------------------------------------------------
    def _client(self) -> ProviderClient:
        try:
            return client_for(self.provider)
        except crypto.CredentialsUnreadable:
            raise ProviderError(ErrorKind.AUTH, UNREADABLE_KEY,
                                vendor_code="credentials_unreadable") from None
        except ValidationError:  # the stored base URL is no longer allowed
            raise ProviderError(ErrorKind.AUTH, NOT_CONFIGURED,
                                vendor_code="not_configured") from None

    async def deltas(self) -> AsyncIterator[Delta]:
        """The new text as it arrives (`Delta.rewind` > 0 when a vendor rewrote its tail: the
        text continues from the common prefix). Ends after the provider's finish; raises
        ProviderError. Closing this iterator early (a stop, a client that left) closes the
        upstream request.
        """
        client = self._client()
        try:
            async for item in client.stream(self.request):
                if isinstance(item, Delta):
                    if "\x00" in item.text:
                        # No database stores NUL in text (PostgreSQL refuses it): the answer
                        # would be lost at its save. Both doors get the replacement character.
                        item = replace(item, text=item.text.replace("\x00", "\ufffd"))
                    if item.text or item.rewind:
                        self._apply(item)
                        yield item
                elif isinstance(item, Finish):
                    self.finish = item
                    await breaker.arecord_success(self.provider.kind)
                    return
        except ProviderError as exc:
            # A provider that keeps failing before its first token is skipped for a while by
            # answers that have a fallback (answers/fallback.py).
            if self.first_token is None and curable(exc):
                await breaker.arecord_failure(self.provider.kind, exc.kind.value)
                # Recorded here as well as at the end: when a fallback answers, the end sees
                # only the model that answered, and this provider's page must still say it fails.
                await off_loop(provider_status.record_call)(
                    self.provider.pk, ok=False, kind=exc.kind.value, message=exc.message)
            raise
        finally:
            await client.aclose()
        raise ProviderError(ErrorKind.TRUNCATED, "The stream ended without a finish.")

    # --- how it ended ---------------------------------------------------------------------------
    def completed(self) -> Outcome:
        finish = self.finish or Finish(reason="stop")
        usage = finish.usage
        return self._settle(Outcome(
            status=MessageStatus.COMPLETE, finish_reason=finish.reason or "stop",
            request_id=finish.request_id or "",
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None))

    def failed(self, exc: ProviderError) -> Outcome:
        if exc.kind == ErrorKind.CONTENT_FILTERED:
            # F22: a filtered answer is an ending, not a transport error.
            return self._settle(Outcome(
                status=MessageStatus.COMPLETE, finish_reason="content_filter",
                error_code=exc.kind.value, error_message=failure_message(exc),
                request_id=exc.request_id or "", error=exc))
        return self._settle(Outcome(
            status=MessageStatus.FAILED, error_code=exc.kind.value,
            error_message=failure_message(exc), request_id=exc.request_id or "", error=exc))

    def stopped(self) -> Outcome:
        return self._settle(Outcome(status=MessageStatus.STOPPED, finish_reason="stopped"))

    def crashed(self) -> Outcome:
        """Our own bug: the text so far is kept, the user is told to retry."""
        return self._settle(Outcome(status=MessageStatus.FAILED, error_code="internal",
                                    error_message=INTERNAL))

    def interrupted(self) -> Outcome:
        """The process is going away mid-answer: save what there is."""
        return self._settle(Outcome(status=MessageStatus.INTERRUPTED, error_code="interrupted",
                                    error_message=INTERRUPTED))

    def _settle(self, outcome: Outcome) -> Outcome:
        """Text, timings and usage, once. No usage from the provider (stopped, failed
        mid-answer): estimate it, so stopping early does not escape budgets (T22)."""
        text = self.text
        prompt, completion = outcome.prompt_tokens, outcome.completion_tokens
        if completion is None and (text or self.first_token is not None):
            prompt = prompt if prompt is not None else prompt_tokens(self.request)
            completion = estimate_tokens(text)
        ended = time.monotonic()
        return replace(
            outcome, text=text, prompt_tokens=prompt, completion_tokens=completion,
            ttft_ms=None if self.first_token is None else round(
                (self.first_token - self.started) * 1000),
            duration_ms=round((ended - self.started) * 1000))


T = TypeVar("T")


async def persist(save: Callable[[Outcome], T], outcome: Outcome, *, what: str) -> T:
    """Run the synchronous `save(outcome)` off the event loop until it lands (F17).

    The database may be away for a moment (a failover, a restart): retry with backoff for
    about half a minute before giving up. `save` must be idempotent.
    """
    delay = 0.2
    attempts = 8
    for attempt in range(attempts):
        try:
            result: T = await off_loop(save)(outcome)
            return result
        except Exception:
            if attempt == attempts - 1:
                raise
            log.warning("final save of %s failed; retrying", what)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


def outcome_fields(outcome: Outcome) -> dict[str, Any]:
    """The message-row fields of an outcome (None means "leave as it is")."""
    fields = {
        "status": outcome.status, "content": outcome.text,
        "finish_reason": outcome.finish_reason, "error_code": outcome.error_code,
        "error_message": outcome.error_message, "request_id": outcome.request_id[:120],
        "prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
        "ttft_ms": outcome.ttft_ms, "duration_ms": outcome.duration_ms,
    }
    return {k: v for k, v in fields.items() if v is not None}


def record_usage(record: UsageRecord | int, model: ModelConfig, outcome: Outcome) -> None:
    """The ledger row of a finished answer, web or API alike: written once, at the end."""
    accounting.record_finish(record, status=outcome.status, model=model,
                             prompt_tokens=outcome.prompt_tokens,
                             completion_tokens=outcome.completion_tokens,
                             request_id=outcome.request_id, ttft_ms=outcome.ttft_ms,
                             duration_ms=outcome.duration_ms, error_code=outcome.error_code)
    record_provider_status(model, outcome)


def record_provider_status(model: ModelConfig, outcome: Outcome) -> None:
    """The provider's health after this call (providers/status.py): a completed answer means
    it works, a provider error that it fails; a stop, our own crash or a shutdown say nothing."""
    if outcome.status == MessageStatus.COMPLETE:
        provider_status.record_call(model.provider_id, ok=True)
    elif outcome.error is not None:
        provider_status.record_call(model.provider_id, ok=False,
                                    kind=outcome.error.kind.value, message=outcome.error.message)
