"""The runner: provider stream -> coalesce -> publish -> persist.

One `Generation` per assistant message. It is not tied to any websocket: closing a tab does
not stop it. Deltas go to the conversation's group at most every STREAM_COALESCE_MS with
their character offset; completed Markdown blocks are rendered once and sent as HTML; the
text is saved at most about once a second and finally with status, usage and timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from conversations import events
from conversations.chat.selectors import history_for
from conversations.models import ACTIVE_STATUSES, Message, MessageStatus, UsageRecord
from conversations.rendering import render_markdown, render_markdown_cached, split_stable
from conversations.runtime import off_loop
from conversations.usage import accounting
from providers import crypto
from providers.base import ChatRequest, Delta, ErrorKind, Finish, ProviderError
from providers.base import Message as WireMessage
from providers.services import client_for

log = logging.getLogger(__name__)

_runner: tuple[int, str] | None = None


def runner_id() -> str:
    """host:pid:random of this process; computed per process (Celery forks after import)."""
    global _runner
    if _runner is None or _runner[0] != os.getpid():
        _runner = (os.getpid(), f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    return _runner[1]


PERSIST_SECONDS = 1.0
HEARTBEAT_SECONDS = 10.0
QUEUED_STALE_SECONDS = 600

_running: dict[uuid.UUID, Generation] = {}

# What a user reads when an answer failed, by error kind (the partial text is kept).
FAILURE_MESSAGES = {
    ErrorKind.AUTH: "The provider refused our credentials. An administrator has to fix the key.",
    ErrorKind.QUOTA_EXHAUSTED: "The provider's quota is used up. It resets later; try another "
                               "model meanwhile.",
    ErrorKind.RATE_LIMITED: "The provider is rate limiting us. Retry in a moment.",
    ErrorKind.UNAVAILABLE: "The provider is unavailable right now. Retry in a moment.",
    ErrorKind.TIMEOUT: "The provider stopped sending. Retry in a moment.",
    ErrorKind.BAD_REQUEST: "The provider refused this request.",
    ErrorKind.CONTENT_FILTERED: "The provider's content filter stopped this answer.",
    ErrorKind.TRUNCATED: "The answer was cut off before it ended. Retry to get a full answer.",
}


def dispatch(message: Message) -> None:
    """Start generating `message` (call after the transaction that created it committed)."""
    from conversations import runtime

    model = message.model
    if settings.REDIS_URL and model is not None and model.vision:
        from conversations.answers.tasks import generate_answer

        generate_answer.delay(str(message.pk))
        return
    runtime.submit(run_generation, message.pk)


def is_running_here(message_id: uuid.UUID) -> bool:
    return message_id in _running


@dataclass
class Job:
    message: Message
    request: ChatRequest


@off_loop
def _claim(message_id: uuid.UUID) -> Job | dict[str, Any] | None:
    """queued -> streaming, exactly once (a redelivered job finds nothing to claim).

    Returns the job, None when there is nothing to do, or the final state event of an answer
    that failed before it could start (its request could not be built).
    """
    now = timezone.now()
    claimed = Message.objects.filter(pk=message_id, status=MessageStatus.QUEUED).update(
        status=MessageStatus.STREAMING, runner=runner_id(), heartbeat_at=now)
    if not claimed:
        return None
    message = Message.objects.select_related(
        "conversation", "model", "model__provider").get(pk=message_id)
    try:
        return Job(message=message, request=build_request(message))
    except Exception as exc:
        log.error("could not prepare answer %s: %s", message_id, type(exc).__name__,
                  exc_info=True)
        outcome = {"status": MessageStatus.FAILED, "error_code": "internal",
                   "error_message": "This answer could not be prepared. Retry.",
                   "content": ""}
        saved = _save_final_sync(message_id, outcome)
        return {"type": events.STATE, "seq": message.seq, "id": str(message_id),
                "conversation": str(message.conversation_id), "length": 0, **saved}


def build_request(message: Message) -> ChatRequest:
    from conversations.images.attachments import image_parts_for

    conversation = message.conversation
    model = message.model or conversation.model
    history = history_for(message)
    wire = tuple(
        WireMessage(role=m.role, text=m.content,
                    images=image_parts_for(m, model) if m.role == Message.Role.USER else ())
        for m in history
    )
    params = {**(model.default_params or {}), **(conversation.params or {})}
    params = {k: v for k, v in params.items() if k in model.param_specs()}
    return ChatRequest(model=model.model_id, messages=wire, system=conversation.system_prompt,
                       params=params)


async def run_generation(message_id: uuid.UUID | str) -> None:
    message_id = uuid.UUID(str(message_id))
    job = await _claim(message_id)
    if job is None:
        return
    if isinstance(job, dict):  # failed before it started: tell the viewers
        await events.publish(events.conversation_group(job.pop("conversation")), job)
        return
    generation = Generation(job)
    _running[message_id] = generation
    try:
        await generation.run()
    finally:
        _running.pop(message_id, None)


class Generation:
    def __init__(self, job: Job) -> None:
        message = job.message
        self.job = job
        self.message_id = message.pk
        self.seq = message.seq
        self.group = events.conversation_group(message.conversation_id)
        self.parts: list[str] = []
        self.length = 0
        # Published so far, as Python indexes and as UTF-16 code units: offsets on the wire are
        # UTF-16 units (what a JavaScript string's length counts; see docs/protocol.md).
        self.sent = 0
        self.sent_u16 = 0
        self.stable = 0  # characters published as rendered blocks
        self.stable_u16 = 0
        self.saved = 0
        self.window = settings.STREAM_COALESCE_MS / 1000
        self.last_flush = 0.0
        self.flush_timer: asyncio.TimerHandle | None = None
        self.pending_flushes: set[asyncio.Task[None]] = set()
        self.lock = asyncio.Lock()
        self.started = time.monotonic()
        self.first_token: float | None = None
        self.stop_requested = False
        self.stream_task: asyncio.Task[Finish] | None = None
        request = job.request
        self.prompt_chars = len(request.system) + sum(len(m.text) for m in request.messages)

    # --- text ---------------------------------------------------------------------------
    @property
    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""

    def _append(self, delta: str) -> None:
        if not delta:
            return
        if self.first_token is None:
            self.first_token = time.monotonic()
        self.parts.append(delta)
        self.length += len(delta)

    # --- the job ------------------------------------------------------------------------
    async def run(self) -> None:
        layer = get_channel_layer()
        # The default "specific." prefix matters with channels_redis: all of a process's
        # specific channels share one Redis list and one receive loop; a channel with another
        # prefix would hold that loop in its own BRPOP and stall every consumer for seconds.
        control = await self._join_control(layer)
        helpers = [asyncio.create_task(self._tick())]
        if layer and control:
            helpers.append(asyncio.create_task(self._listen(layer, control)))
        await events.publish(self.group, self._state_event(MessageStatus.STREAMING))
        outcome: dict[str, Any]
        try:
            self.stream_task = asyncio.create_task(self._stream())
            finish = await self.stream_task
            outcome = self._complete(finish)
        except asyncio.CancelledError:
            if not self.stop_requested:
                # The server is shutting down: save what we have; the reaper or a retry
                # finishes the story.
                await self._finish_quietly(MessageStatus.INTERRUPTED, helpers, layer, control)
                raise
            outcome = {"status": MessageStatus.STOPPED, "finish_reason": "stopped"}
        except ProviderError as exc:
            outcome = self._failed(exc)
        except crypto.CredentialsUnreadable:
            outcome = {"status": MessageStatus.FAILED, "error_code": "auth",
                       "error_message": "The provider's stored key cannot be decrypted. An "
                                        "administrator has to enter it again."}
        except Exception as exc:
            log.error("generation %s failed: %s", self.message_id, type(exc).__name__,
                      exc_info=True)
            outcome = {"status": MessageStatus.FAILED, "error_code": "internal",
                       "error_message": "Something went wrong on our side. Retry."}
        await self._end(outcome, helpers, layer, control)

    async def _stream(self) -> Finish:
        client = client_for(self.job.message.model.provider)
        try:
            async for item in client.stream(self.job.request):
                if isinstance(item, Delta):
                    self._append(item.text)
                    await self._maybe_flush()
                elif isinstance(item, Finish):
                    return item
        finally:
            await client.aclose()
        raise ProviderError(ErrorKind.TRUNCATED, "The stream ended without a finish.")

    def _complete(self, finish: Finish) -> dict[str, Any]:
        usage = finish.usage
        outcome: dict[str, Any] = {"status": MessageStatus.COMPLETE,
                                   "finish_reason": finish.reason or "stop",
                                   "request_id": finish.request_id or ""}
        if usage:
            outcome["prompt_tokens"] = usage.prompt_tokens
            outcome["completion_tokens"] = usage.completion_tokens
        return outcome

    def _failed(self, exc: ProviderError) -> dict[str, Any]:
        message = exc.message if exc.kind == ErrorKind.BAD_REQUEST else FAILURE_MESSAGES.get(
            exc.kind, exc.message)
        if exc.kind == ErrorKind.CONTENT_FILTERED:
            # F22: a filtered answer is an ending, not a transport error.
            return {"status": MessageStatus.COMPLETE, "finish_reason": "content_filter",
                    "error_code": exc.kind.value, "error_message": message,
                    "request_id": exc.request_id or ""}
        return {"status": MessageStatus.FAILED, "error_code": exc.kind.value,
                "error_message": message, "request_id": exc.request_id or ""}

    # --- publishing ---------------------------------------------------------------------
    async def _maybe_flush(self) -> None:
        now = time.monotonic()
        if now - self.last_flush >= self.window:
            await self._flush()
        elif self.flush_timer is None:
            loop = asyncio.get_running_loop()
            self.flush_timer = loop.call_later(self.window - (now - self.last_flush),
                                               self._flush_later)

    def _flush_later(self) -> None:
        # Keep a reference: a task nobody holds may be garbage-collected mid-run.
        task = asyncio.ensure_future(self._flush())
        self.pending_flushes.add(task)
        task.add_done_callback(self.pending_flushes.discard)

    async def _flush(self, final: bool = False) -> None:
        async with self.lock:
            if self.flush_timer is not None:
                self.flush_timer.cancel()
                self.flush_timer = None
            self.last_flush = time.monotonic()
            if self.length == self.sent and not final:
                return
            # From here on, `text` is what this flush publishes; later deltas wait for the next.
            text = self.text  # a snapshot: deltas may arrive while we await the publish
            if len(text) > self.sent:
                piece, offset = text[self.sent:], self.sent_u16
                self.sent = len(text)
                self.sent_u16 += u16_len(piece)
                await events.publish(self.group, {"type": events.DELTA, "seq": self.seq,
                                                  "offset": offset, "text": piece})
            upto = len(text) if final else split_stable(text, self.stable)
            if upto > self.stable:
                block = text[self.stable:upto]
                self.stable_u16 += u16_len(block)
                self.stable = upto
                await events.publish(self.group, {"type": events.BLOCKS, "seq": self.seq,
                                                  "upto": self.stable_u16,
                                                  "html": render_markdown(block)})

    def _state_event(self, status: str, **extra: Any) -> dict[str, Any]:
        return {"type": events.STATE, "seq": self.seq, "id": str(self.message_id),
                "status": status, **extra}

    async def _join_control(self, layer: Any) -> str | None:
        """The channel that receives stop and resync requests, or None when the layer is away:
        the answer goes on regardless (stop then works through the database flag)."""
        if layer is None:
            return None
        try:
            control: str = await layer.new_channel()
            await layer.group_add(events.generation_group(self.message_id), control)
        except Exception as exc:
            log.warning("answer %s runs without its control channel: %s", self.message_id,
                        type(exc).__name__)
            return None
        return control

    async def _listen(self, layer: Any, channel: str) -> None:
        while True:
            try:
                event = await layer.receive(channel)
            except Exception as exc:  # the layer is away: keep writing, try again later
                log.warning("control channel of %s: %s", self.message_id, type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            kind = event.get("type")
            if kind == events.STOP:
                self.request_stop()
            elif kind == events.RESYNC and event.get("reply_to"):
                await self._flush()
                text = self.text
                with contextlib.suppress(Exception):  # the viewer asks again if it must
                    await layer.send(event["reply_to"], {
                        "type": events.SNAPSHOT, "seq": self.seq, "text": text[:self.sent],
                        "upto": self.stable_u16, "html": render_markdown(text[:self.stable])})

    def request_stop(self) -> None:
        self.stop_requested = True
        if self.stream_task is not None and not self.stream_task.done():
            self.stream_task.cancel()

    async def _tick(self) -> None:
        """Persist the partial text about once a second; heartbeat while waiting."""
        last_beat = time.monotonic()
        # Beat well inside the reaper's limit, whatever it is set to.
        heartbeat = min(HEARTBEAT_SECONDS, settings.GENERATION_STALE_SECONDS / 3)
        while True:
            await asyncio.sleep(PERSIST_SECONDS)
            now = time.monotonic()
            if self.length != self.saved or now - last_beat >= heartbeat:
                text = self.text
                stop = await _save_partial(self.message_id, text)
                self.saved, last_beat = len(text), now
                if stop and not self.stop_requested:
                    self.request_stop()  # the stop event was missed; the flag was not

    # --- the end ------------------------------------------------------------------------
    async def _end(self, outcome: dict[str, Any], helpers: list[asyncio.Task[Any]],
                   layer: Any, control: str | None) -> None:
        for task in helpers:
            task.cancel()
        await self._flush(final=True)
        text = self.text
        ended = time.monotonic()
        if outcome.get("completion_tokens") is None and (text or self.first_token is not None):
            # No usage from the provider (stopped, failed mid-answer): estimate it, about four
            # characters a token, so stopping early does not escape budgets (T22).
            outcome["prompt_tokens"] = estimate_tokens(self.prompt_chars)
            outcome["completion_tokens"] = estimate_tokens(len(text))
        outcome.update({
            "content": text,
            "ttft_ms": None if self.first_token is None else round(
                (self.first_token - self.started) * 1000),
            "duration_ms": round((ended - self.started) * 1000),
        })
        saved = await _save_final(self.message_id, outcome)
        if layer and control:
            with contextlib.suppress(Exception):  # its membership expires with the layer
                await layer.group_discard(events.generation_group(self.message_id), control)
        await events.publish(self.group, self._state_event(
            saved["status"], length=u16_len(text), error_code=saved.get("error_code", ""),
            error_message=saved.get("error_message", ""),
            finish_reason=saved.get("finish_reason", ""),
            usage={"prompt_tokens": saved.get("prompt_tokens"),
                   "completion_tokens": saved.get("completion_tokens")}))

    async def _finish_quietly(self, status: str, helpers: list[asyncio.Task[Any]], layer: Any,
                              control: str | None) -> None:
        for task in helpers:
            task.cancel()
        try:
            await asyncio.shield(_save_final(self.message_id, {
                "status": status, "content": self.text, "error_code": "interrupted",
                "error_message": "The server restarted while this answer was written."}))
        except Exception:
            log.warning("could not save interrupted answer %s", self.message_id)


def estimate_tokens(chars: int) -> int:
    return (chars + 3) // 4


def u16_len(text: str) -> int:
    """Length in UTF-16 code units: characters beyond the BMP (emoji) count twice."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


@off_loop
def _save_partial(message_id: uuid.UUID, text: str) -> bool:
    """Save the partial text; returns True when a stop was requested meanwhile.

    One statement in the usual case: the update skips a message whose stop was requested,
    and only then (or when the message is no longer streaming) a second query tells which.
    """
    saved = Message.objects.filter(
        pk=message_id, status=MessageStatus.STREAMING, stop_requested=False).update(
        content=text, heartbeat_at=timezone.now())
    if saved:
        return False
    return Message.objects.filter(pk=message_id, stop_requested=True).exists()


def _save_final_sync(message_id: uuid.UUID, outcome: dict[str, Any]) -> dict[str, Any]:
    message = Message.objects.select_related("model").get(pk=message_id)
    fields = {k: v for k, v in outcome.items() if v is not None}
    for key, value in fields.items():
        setattr(message, key, value)
    if message.model and (message.prompt_tokens or message.completion_tokens):
        message.cost = message.model.cost(message.prompt_tokens, message.completion_tokens)
    message.heartbeat_at = timezone.now()
    message.save()
    if message.status == MessageStatus.COMPLETE:
        # Every open page fetches the finished message right away: render it once, here.
        render_markdown_cached(message.content)
    usage = UsageRecord.objects.filter(message=message).first()
    if usage is not None and message.model is not None:
        accounting.record_finish(
            usage, status=message.status, model=message.model,
            prompt_tokens=message.prompt_tokens, completion_tokens=message.completion_tokens,
            request_id=message.request_id, ttft_ms=message.ttft_ms,
            duration_ms=message.duration_ms)
    return {"status": message.status, "error_code": message.error_code,
            "error_message": message.error_message, "finish_reason": message.finish_reason,
            "prompt_tokens": message.prompt_tokens,
            "completion_tokens": message.completion_tokens}


async def _save_final(message_id: uuid.UUID, outcome: dict[str, Any]) -> dict[str, Any]:
    """The final write must land (F17): retry with backoff while the database is away."""
    delay = 0.2
    for attempt in range(8):
        try:
            return await off_loop(_save_final_sync)(message_id, outcome)
        except Message.DoesNotExist:
            return {"status": outcome.get("status", MessageStatus.FAILED)}  # deleted meanwhile
        except Exception:
            if attempt == 7:
                raise
            log.warning("final save of %s failed; retrying", message_id)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


# --- the reaper -------------------------------------------------------------------------------
def reap_stale(now: Any = None) -> list[tuple[uuid.UUID, uuid.UUID, int]]:
    """Mark answers whose runner stopped making progress as interrupted (F12, F16).

    Returns (conversation id, message id, seq) for each one, so callers can broadcast.
    """
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.GENERATION_STALE_SECONDS)
    queued_stale = now - timedelta(seconds=QUEUED_STALE_SECONDS)
    condition = (Q(status=MessageStatus.STREAMING)
                 & (Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True))) | (
        Q(status=MessageStatus.QUEUED) & Q(created_at__lt=queued_stale))
    rows = list(Message.objects.filter(condition).values_list("conversation_id", "pk", "seq"))
    reaped = []
    for conversation_id, message_id, seq in rows:
        updated = Message.objects.filter(Q(pk=message_id) & condition).update(
            status=MessageStatus.INTERRUPTED, error_code="interrupted",
            error_message="This answer stopped: the process writing it went away.",
            updated_at=now)
        if updated:
            UsageRecord.objects.filter(message_id=message_id, finished_at__isnull=True).update(
                finished_at=now, status=MessageStatus.INTERRUPTED)
            reaped.append((conversation_id, message_id, seq))
    return reaped


async def reap_and_announce() -> int:
    reaped = await off_loop(reap_stale)()
    for conversation_id, message_id, seq in reaped:
        await events.publish(events.conversation_group(conversation_id), {
            "type": events.STATE, "seq": seq, "id": str(message_id),
            "status": MessageStatus.INTERRUPTED, "error_code": "interrupted",
            "error_message": "This answer stopped: the process writing it went away."})
    return len(reaped)


async def reaper_loop(interval: float = 15.0) -> None:
    while True:
        try:
            await reap_and_announce()
        except Exception:
            log.warning("reaper pass failed", exc_info=True)
        await asyncio.sleep(interval)


__all__ = ["ACTIVE_STATUSES", "dispatch", "reap_stale", "run_generation"]
