"""The `/v1` adapter of the answer core: an `Answer`'s deltas as OpenAI chunks or one body.

The stream, the outcome rules and the ledger row are the core's (answers/core.py), the same as
the web page's; this module only shapes them in OpenAI's wire format. Errors before any output
become HTTP errors; errors after the first chunk arrive in the stream (the ledger is written
first: a client stops reading at the error event).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import async_to_sync
from django.http import JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from conversations.answers import fallback
from conversations.answers.core import Answer, Outcome, persist, record_usage
from conversations.api import tools
from conversations.api.errors import internal, provider_error
from conversations.api.prepare import Prepared, fall_back
from conversations.models import Attachment, MessageStatus
from conversations.runtime import off_loop
from providers.base import Delta, ProviderError

log = logging.getLogger(__name__)

FINISH_REASONS = {"stop": "stop", "length": "length", "max_tokens": "length",
                  "content_filter": "content_filter", "tool_calls": "tool_calls"}


def _finish_sync(prepared: Prepared, outcome: Outcome) -> None:
    record_usage(prepared.record_id, prepared.model, outcome)
    if prepared.attachment_ids:
        # The provider has read the images: an API call keeps no uploads (files go with the
        # rows, through the post_delete signal).
        Attachment.objects.filter(pk__in=prepared.attachment_ids).delete()


def event(payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


DONE = b"data: [DONE]\n\n"
# Stands for a token's text in a chunk encoded once, then split around it (`text_chunk`).
_TEXT_MARK = "\x00text\x00"
_TEXT_MARK_JSON = json.dumps(_TEXT_MARK).encode()


class Completion:
    """One API call: its `Answer`, and its entry in the ledger, written once."""

    def __init__(self, prepared: Prepared) -> None:
        self.prepared = prepared
        self.answer = Answer(prepared.model.provider, prepared.request)
        self.slug = prepared.model.slug
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.deltas: AsyncIterator[Delta] | None = None
        self.ended = False
        self.shown: list[str] = []  # what the client was sent
        # A text chunk's bytes before and after its text, for the model and the usage flag.
        self._around_text: tuple[tuple[str, bool], bytes, bytes] | None = None
        self.diverged = False  # the vendor rewrote text the client already has

    async def open(self) -> str | None:
        """Connect and wait for the first text: errors before any output are raised here.
        None when the answer finished without text.

        With `"fallback": true`, a curable failure before the first text moves the call to
        the model's next fallback (answers/fallback.py); `model` then names the one that
        answered."""
        while True:
            self.deltas = self.answer.deltas()
            try:
                return await self.next()
            except ProviderError as exc:
                if not await self._fall_back(exc):
                    raise

    async def _fall_back(self, exc: ProviderError) -> bool:
        prepared = self.prepared
        if (self.answer.first_token is not None or not prepared.fallbacks
                or not fallback.curable(exc)):
            return False
        first = prepared.model.slug
        if not await off_loop(fall_back)(prepared, exc.kind.value):
            return False
        log.info("api %s: %s failed (%s) before its first token; continuing on %s", self.id,
                 first, exc.kind.value, prepared.model.slug)
        started = self.answer.started
        self.answer = Answer(prepared.model.provider, prepared.request)
        self.answer.started = started
        self.slug = prepared.model.slug
        return True

    async def next(self) -> str | None:
        """The next piece of text; None once the provider finished.

        A client of this API cannot take text back. When a vendor rewrites its tail (DashScope's
        cumulative text), what the client holds is compared with the vendor's text: new text is
        sent once the vendor's is longer, from where the two agree, so nothing is lost or sent
        twice (at most a rewritten character stays with the client).
        """
        assert self.deltas is not None
        while True:
            try:
                delta = await anext(self.deltas)
            except StopAsyncIteration:
                return None
            if delta.rewind:
                self.diverged = True
            piece = self._catch_up() if self.diverged else delta.text
            if piece:
                self.shown.append(piece)
                return piece

    def _catch_up(self) -> str:
        shown, text = "".join(self.shown), self.answer.text
        self.shown = [shown]
        if text.startswith(shown):
            self.diverged = False
            return text[len(shown):]
        if len(text) <= len(shown):
            return ""  # wait until the vendor's text outgrows what the client has
        common = 0
        for old, new in zip(shown, text, strict=False):
            if old != new:
                break
            common += 1
        return text[common:]

    async def end(self, outcome: Outcome) -> None:
        """Close the upstream (a client that left cancels it) and write the ledger. Once."""
        if self.ended:
            return
        self.ended = True
        if self.deltas is not None:
            try:
                await self.deltas.aclose()  # type: ignore[attr-defined]
            except Exception:
                log.warning("api %s: closing the provider stream failed", self.id,
                            exc_info=True)
        prepared = self.prepared
        try:
            await asyncio.shield(persist(lambda o: _finish_sync(prepared, o), outcome,
                                         what=f"api {self.id}"))
        except Exception:
            log.error("api %s: could not record usage", self.id, exc_info=True)
        log.info("api completion %s model=%s status=%s chars=%d", self.id, self.slug,
                 outcome.status, len(outcome.text))

    def abandon(self) -> None:
        """From a sync context (the response's close): end a stream nobody iterated."""
        if not self.ended:
            async_to_sync(self.end)(self.answer.stopped())

    # --- shapes -------------------------------------------------------------------------------
    def marked(self, response: HttpResponseBase) -> HttpResponseBase:
        """`X-Fallback-From: <slug>` when a fallback answered (docs/api.md)."""
        first = self.prepared.fallback_from
        if first is not None:
            response["X-Fallback-From"] = first.slug
        return response

    @staticmethod
    def finish_reason(outcome: Outcome) -> str:
        return FINISH_REASONS.get(outcome.finish_reason or "stop", "stop")

    @staticmethod
    def usage(outcome: Outcome) -> dict[str, int]:
        prompt = outcome.prompt_tokens or 0
        completion = outcome.completion_tokens or 0
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    @property
    def tool_calls(self) -> tuple[Any, ...]:
        """The calls the model asked for (providers/base.py Finish.tool_calls)."""
        finish = self.answer.finish
        return finish.tool_calls if finish is not None else ()

    def body(self, outcome: Outcome) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": outcome.text}
        if self.tool_calls and outcome.status == MessageStatus.COMPLETE:
            # OpenAI's form: no text is null content beside the calls.
            message = {"role": "assistant", "content": outcome.text or None,
                       "tool_calls": tools.message_calls(self.tool_calls)}
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.slug,
                "choices": [{"index": 0, "message": message,
                             "logprobs": None, "finish_reason": self.finish_reason(outcome)}],
                "usage": self.usage(outcome)}

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None,
              include_usage: bool = False) -> bytes:
        payload: dict[str, Any] = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.slug,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish_reason}]}
        if include_usage:
            payload["usage"] = None
        return event(payload)

    def text_chunk(self, text: str, include_usage: bool = False) -> bytes:
        """`chunk({"content": text})`, byte for byte, with the envelope encoded once per call
        instead of once per token (issue 16: 3.1 -> 0.8 µs per token in-process)."""
        key = (self.slug, include_usage)  # the slug changes on a fallback, before any text
        if self._around_text is None or self._around_text[0] != key:
            whole = self.chunk({"content": _TEXT_MARK}, include_usage=include_usage)
            if whole.count(_TEXT_MARK_JSON) != 1:  # the mark in a model's name: encode whole
                return self.chunk({"content": text}, include_usage=include_usage)
            head, _, tail = whole.partition(_TEXT_MARK_JSON)
            self._around_text = (key, head, tail)
        _, head, tail = self._around_text
        return head + json.dumps(text, ensure_ascii=False).encode() + tail

    def usage_chunk(self, outcome: Outcome) -> bytes:
        return event({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                      "model": self.slug, "choices": [], "usage": self.usage(outcome)})

    # --- the two answers ----------------------------------------------------------------------
    async def collect(self) -> HttpResponseBase:
        """Non-stream: the whole answer as one chat.completion, or an HTTP error."""
        outcome: Outcome | None = None
        try:
            piece = await self.open()
            while piece is not None:
                piece = await self.next()
            outcome = self.answer.completed()
            return self.marked(JsonResponse(self.body(outcome)))
        except ProviderError as exc:
            outcome = self.answer.failed(exc)
            if outcome.filtered and outcome.text:  # F22: a filtered answer is an ending
                return self.marked(JsonResponse(self.body(outcome)))
            return provider_error(exc).response()
        except Exception:
            log.error("api %s failed", self.id, exc_info=True)
            outcome = self.answer.crashed()
            return internal().response()
        finally:
            # No outcome: the client left (the request was cancelled) mid-answer.
            await self.end(outcome or self.answer.stopped())

    async def events(self, first: str | None, include_usage: bool) -> AsyncIterator[bytes]:
        """Stream: chunks, the finish chunk, usage if asked, [DONE]. Errors go in-stream."""
        outcome: Outcome | None = None
        try:
            yield self.chunk({"role": "assistant", "content": ""}, include_usage=include_usage)
            piece = first
            while piece is not None:
                yield self.text_chunk(piece, include_usage)
                piece = await self.next()
            outcome = self.answer.completed()
            for calls in tools.delta_calls(self.tool_calls):
                yield self.chunk({"tool_calls": calls}, include_usage=include_usage)
            yield self.chunk({}, self.finish_reason(outcome), include_usage=include_usage)
            if include_usage:
                yield self.usage_chunk(outcome)
        except ProviderError as exc:
            outcome = self.answer.failed(exc)
            if outcome.filtered:
                yield self.chunk({}, "content_filter", include_usage=include_usage)
            else:
                await self.end(outcome)  # the ledger first: a client stops at the error
                yield event(provider_error(exc).body())
        except Exception:
            log.error("api %s failed mid-stream", self.id, exc_info=True)
            outcome = self.answer.crashed()
            await self.end(outcome)
            yield event(internal().body())
        finally:
            # No outcome: the client left (GeneratorExit, cancel) mid-answer.
            await self.end(outcome or self.answer.stopped())
        yield DONE


class EventStream(StreamingHttpResponse):
    """text/event-stream that ends its completion even if it is closed without being read."""

    def __init__(self, completion: Completion, first: str | None, include_usage: bool) -> None:
        super().__init__(completion.events(first, include_usage),
                         content_type="text/event-stream; charset=utf-8")
        self.completion = completion
        self["X-Accel-Buffering"] = "no"  # nginx: pass chunks on at once

    def close(self) -> None:
        super().close()
        self.completion.abandon()


async def stream_or_error(completion: Completion, include_usage: bool) -> HttpResponseBase:
    """Open the stream; a failure before any output is an HTTP error, not a stream."""
    try:
        first = await completion.open()
    except ProviderError as exc:
        await completion.end(completion.answer.failed(exc))
        return provider_error(exc).response()
    except asyncio.CancelledError:
        await completion.end(completion.answer.stopped())
        raise
    except Exception:
        log.error("api %s failed before the stream", completion.id, exc_info=True)
        await completion.end(completion.answer.crashed())
        return internal().response()
    return completion.marked(EventStream(completion, first, include_usage))
