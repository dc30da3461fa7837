"""The web adapter of the answer core: deltas -> coalesced channel-layer events -> the message.

One `Generation` per assistant message. It is not tied to any websocket: closing a tab does
not stop it. Deltas go to the conversation's group at most every STREAM_COALESCE_MS with
their offset; completed Markdown blocks are rendered once and sent as HTML; the text is saved
at most about once a second and finally with status, usage and timings (the final write and
the ledger row go through the core: answers/core.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone, translation

from chatsite.compiled import Compiled
from conversations import events
from conversations.answers import fallback, titles
from conversations.answers.core import Answer, Outcome, outcome_fields, persist, record_usage
from conversations.answers.history import request_for
from conversations.errors import NOT_PREPARED, ServiceError
from conversations.models import Message, MessageStatus, UsageRecord
from conversations.rendering import (
    remember_rendered,
    render_markdown,
    render_markdown_cached,
    split_stable,
)
from conversations.runtime import off_loop
from providers.base import ChatRequest, ProviderError
from providers.models import ModelConfig

log = logging.getLogger(__name__)

PERSIST_SECONDS = 1.0
_NONE = 2**62  # "no rewrite pending"
HEARTBEAT_SECONDS = 10.0

_runner: tuple[int, str] | None = None
_running: dict[uuid.UUID, Generation] = {}


def runner_id() -> str:
    """host:pid:random of this process; computed per process (Celery forks after import)."""
    global _runner
    if _runner is None or _runner[0] != os.getpid():
        _runner = (os.getpid(), f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    return _runner[1]


def is_running_here(message_id: uuid.UUID) -> bool:
    return message_id in _running


def running() -> list[Generation]:
    """The answers this process is writing now."""
    return list(_running.values())


@dataclass
class Job:
    message: Message
    request: ChatRequest
    sources: tuple[uuid.UUID, ...] = ()  # the stored message of each of request.messages
    # The models left to try (answers/fallback.py). None: not read yet. They are read before
    # the first call only when the model's breaker is open; otherwise on the first failure a
    # fallback may cure (most answers never fail: the read stays off the way to the vendor).
    fallbacks: tuple[ModelConfig, ...] | None = None


@dataclass
class NotPrepared:
    """An answer that failed before it could start, and the frame that tells its viewers."""

    conversation_id: uuid.UUID
    event: events.Event


def claim(message_id: uuid.UUID, handed: Message | None = None) -> Job | NotPrepared | None:
    """queued -> streaming, exactly once (a redelivered job finds nothing to claim).

    Returns the job, None when there is nothing to do, or the final state event of an answer
    that failed before it could start (its request could not be built). `handed`: the message
    as the posting service stored it (jobs.start), so that the claim is one statement, or
    none when the service stored it claimed by this process (jobs.claim_at_insert).
    """
    now = _stored_claimed(message_id, handed)
    if now is None:
        now = timezone.now()
        claimed = Message.objects.filter(pk=message_id, status=MessageStatus.QUEUED).update(
            status=MessageStatus.STREAMING, runner=runner_id(), heartbeat_at=now)
        if not claimed:
            return None
    message = _claimed(message_id, handed, now)
    try:
        with translation.override("en"):  # stored in English; pages translate by its code
            shaped = request_for(message)
    except ServiceError as exc:  # a rule of the model refuses this history (image, context)
        saved = _save_final(message_id, Outcome(
            status=MessageStatus.FAILED, error_code=exc.code, error_message=exc.message))
    except Exception as exc:
        log.error("could not prepare answer %s: %s", message_id, type(exc).__name__,
                  exc_info=True)
        saved = _save_final(message_id, Outcome(
            status=MessageStatus.FAILED, error_code="internal", error_message=NOT_PREPARED))
    else:
        if shaped.dropped:
            Message.objects.filter(pk=message_id).update(context_dropped=shaped.dropped)
        return _with_fallbacks(Job(message=message, request=shaped.request,
                                   sources=shaped.sources))
    if saved is None:
        return None
    return NotPrepared(saved.conversation_id, events.final_state_of(saved))


def _stored_claimed(message_id: uuid.UUID, handed: Message | None) -> datetime | None:
    """The claim's time when the posting service inserted this answer already claimed by this
    process (its insert, committed once, was the claim: jobs.claim_at_insert); else None."""
    if (handed is not None and handed.pk == message_id
            and handed.status == MessageStatus.STREAMING and handed.runner == runner_id()):
        return handed.heartbeat_at
    return None


def _claimed(message_id: uuid.UUID, handed: Message | None, now: Any) -> Message:
    """The claimed message with its conversation, model, provider and prompt: the handed one
    when it carries them (what the claim wrote is set on it), else read once."""
    if handed is not None and handed.pk == message_id and _carries_relations(handed):
        handed.status, handed.runner, handed.heartbeat_at = (
            MessageStatus.STREAMING, runner_id(), now)
        return handed
    return Message.objects.select_related(
        "conversation", "conversation__owner", "model", "model__provider", "parent",
        "parent__author").get(pk=message_id)


def _carries_relations(message: Message) -> bool:
    # The loop's side reads the model's provider (Generation); nothing may load it lazily there.
    return (Message.conversation.is_cached(message) and Message.model.is_cached(message)
            and message.model is not None and ModelConfig.provider.is_cached(message.model))


def _with_fallbacks(job: Job) -> Job:
    """The job, started on its model's first fallback at once when its own provider's circuit
    breaker is open (answers/fallback.py); the fallbacks are read only then."""
    model = job.message.model
    if model is None or not fallback.breaker_open(model):
        return job
    fallbacks = fallback.candidates(job.message)
    reason = fallback.open_reason(model, fallbacks)
    switched = fallback.switch_web(job.message.pk, fallbacks, reason) if reason else None
    if switched is None:
        return replace(job, fallbacks=tuple(fallbacks))
    model, shaped, rest = switched
    job.message.model = model
    return replace(job, request=shaped.request, sources=shaped.sources, fallbacks=tuple(rest))


_claim = off_loop(claim)


async def run_generation(message_id: uuid.UUID | str, language: str = "",
                         handed: Message | None = None) -> None:
    """Write one queued answer. `language` is the interface language of the person who asked
    (the title written after a first answer follows it when the prompt's is unclear).
    `handed`: the message as the service stored it, read nothing back (jobs.start)."""
    await run_claimed(await _claim(uuid.UUID(str(message_id)), handed), language)


async def run_claimed(job: Job | NotPrepared | None, language: str = "") -> None:
    """Write an answer `claim` returned (jobs.start claims in the posting thread, so that the
    loop's first act for a new answer is the vendor call)."""
    if job is None:
        return
    if isinstance(job, NotPrepared):  # failed before it started: tell the viewers
        await events.publish(events.conversation_group(job.conversation_id), job.event)
        return
    message_id = job.message.pk
    generation = Generation(job, language)
    _running[message_id] = generation
    try:
        await generation.run()
    finally:
        _running.pop(message_id, None)


class Generation:
    def __init__(self, job: Job, language: str = "") -> None:
        message = job.message
        self.language = language
        # Set once the viewers were told the answer is streaming: nothing of it is published
        # before that (the vendor call may already be under way: `run`).
        self.announced = asyncio.Event()
        assert message.model is not None  # set on every assistant message the services create
        self.job = job
        self.answer = Answer(message.model.provider, job.request)
        self.message_id = message.pk
        self.seq = message.seq
        self.group = events.conversation_group(message.conversation_id)
        # Published so far, as Python indexes and as UTF-16 code units: offsets on the wire are
        # UTF-16 units (what a JavaScript string's length counts; see docs/protocol.md).
        self.sent = 0
        self.sent_u16 = 0
        self.stable = 0  # characters published as rendered blocks
        self.stable_u16 = 0
        # The HTML of those blocks, in order. Rendered stable pieces add up to the rendering of
        # the whole (split_stable's promise), so a snapshot and the finished answer's cached
        # HTML are these joined, not a second render. None once a vendor's rewrite reached
        # into a published block: the blocks then no longer add up to the text.
        self.blocks: list[str] | None = []
        self.saved = 0
        self.window = settings.STREAM_COALESCE_MS / 1000
        self.last_flush = 0.0
        self.flush_timer: asyncio.TimerHandle | None = None
        self.pending_flushes: set[asyncio.Task[None]] = set()
        self.lock = asyncio.Lock()
        self.stop_requested = False
        self.stream_task: asyncio.Task[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.rewound_to = _NONE  # the lowest common prefix since the last flush, if any

    @property
    def text(self) -> str:
        return self.answer.text

    # --- the job ------------------------------------------------------------------------
    def interrupt(self) -> asyncio.Task[None] | None:
        """Stop now and save the text as interrupted (a drain's end); the task that saves."""
        if self.stream_task is not None and not self.stream_task.done():
            self.stream_task.cancel()
        return self.task

    async def run(self) -> None:
        self.task = asyncio.current_task()
        layer = get_channel_layer()
        # The vendor call goes out first: the stream task's first step writes the request (on a
        # warm connection) while the control channel is joined and the viewers are told, which
        # with Redis are round trips. Its first publish waits for that announcement.
        self.stream_task = asyncio.create_task(self._stream())
        helpers = [asyncio.create_task(self._tick())]
        control = None
        try:
            # The default "specific." prefix matters with channels_redis: all of a process's
            # specific channels share one Redis list and one receive loop; a channel with
            # another prefix would hold that loop in its own BRPOP and stall every consumer for
            # seconds.
            control = await self._join_control(layer)
            if layer and control:
                helpers.append(asyncio.create_task(self._listen(layer, control)))
            await events.publish(self.group, events.state(self.seq, self.message_id,
                                                          MessageStatus.STREAMING))
            self.announced.set()
            await self.stream_task
            outcome = self.answer.completed()
        except asyncio.CancelledError:
            if not self.stop_requested:
                self.stream_task.cancel()
                # The server is shutting down: save what we have; the reaper or a retry
                # finishes the story.
                await self._finish_quietly(helpers)
                raise
            outcome = self.answer.stopped()
        except ProviderError as exc:
            outcome = self.answer.failed(exc)
            await self._leave_out_flagged(exc)
        except Exception as exc:
            log.error("generation %s failed: %s", self.message_id, type(exc).__name__,
                      exc_info=True)
            outcome = self.answer.crashed()
        await self._end(outcome, helpers, layer, control)

    async def _stream(self) -> None:
        while True:
            try:
                async for delta in self.answer.deltas():
                    if delta.rewind:
                        # The vendor rewrote its tail: what was published past the common
                        # prefix is sent again from there (the page replaces from an offset,
                        # docs/protocol.md).
                        self.rewound_to = min(self.rewound_to,
                                              self.answer.length - len(delta.text))
                    await self._maybe_flush()
                return
            except ProviderError as exc:
                if not await self._fall_back(exc):
                    raise

    async def _fall_back(self, exc: ProviderError) -> bool:
        """Failed before the first token with a curable kind: continue on the next fallback
        model (answers/fallback.py). False when the error stands."""
        if self.answer.first_token is not None or not fallback.curable(exc):
            return False
        if self.job.fallbacks is None:
            self.job = replace(self.job, fallbacks=tuple(
                await off_loop(fallback.candidates)(self.job.message)))
        if not self.job.fallbacks:
            return False
        switched = await off_loop(fallback.switch_web)(self.message_id, self.job.fallbacks,
                                                       exc.kind.value)
        if switched is None:
            return False
        model, shaped, rest = switched
        log.info("answer %s: %s failed (%s) before its first token; continuing on %s",
                 self.message_id, self.job.message.model, exc.kind.value, model.slug)
        self.job = replace(self.job, request=shaped.request, sources=shaped.sources,
                           fallbacks=tuple(rest))
        self.job.message.model = model
        started = self.answer.started
        self.answer = Answer(model.provider, shaped.request)
        self.answer.started = started  # the timings count from the first attempt
        # Open pages draw the answer again: its model and the one-line notice (protocol.md).
        await self.announced.wait()
        await events.publish(self.group, events.state(
            self.seq, self.message_id, MessageStatus.STREAMING, fallback=model.slug))
        return True

    async def _leave_out_flagged(self, exc: ProviderError) -> None:
        """Turns a vendor's moderation flagged are left out of this branch from now on."""
        flagged = exc.details.get("flagged_messages") or []
        ids = [self.job.sources[i] for i in flagged
               if isinstance(i, int) and 0 <= i < len(self.job.sources)]
        if ids:
            await off_loop(_exclude)(ids)

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
        if not final:  # "streaming" first (run); the final flush follows it or its abandonment
            await self.announced.wait()
        async with self.lock:
            if self.flush_timer is not None:
                self.flush_timer.cancel()
                self.flush_timer = None
            self.last_flush = time.monotonic()
            if self.answer.length == self.sent and not final:
                return
            # From here on, `text` is what this flush publishes; later deltas wait for the next.
            text = self.text  # a snapshot: deltas may arrive while we await the publish
            if self.rewound_to < self.sent and (len(text) > self.sent or final):
                # Published past the vendor's rewrite: go back to the common prefix. (Held
                # until the text outgrows what was published, so the page's "already have
                # it" rule cannot skip it; the final fragment replaces it in any case.)
                self.sent = self.rewound_to
                self.sent_u16 = events.u16_len(text[:self.sent])
                if self.stable > self.sent:  # rendered blocks are final on the page
                    log.info("answer %s rewrote text inside a rendered block", self.message_id)
                    self.stable = self.sent
                    self.stable_u16 = self.sent_u16
                    self.blocks = None
            if self.rewound_to < _NONE and self.sent <= self.rewound_to:
                self.rewound_to = _NONE
            if len(text) > self.sent:
                piece, offset = text[self.sent:], self.sent_u16
                self.sent = len(text)
                self.sent_u16 += events.u16_len(piece)
                await events.publish(self.group, events.delta(self.seq, offset, piece))
            upto = len(text) if final else split_stable(text, self.stable)
            if upto > self.stable:
                block = text[self.stable:upto]
                self.stable_u16 += events.u16_len(block)
                self.stable = upto
                html = render_markdown(block)
                if self.blocks is not None:
                    self.blocks.append(html)
                await events.publish(self.group, events.blocks(self.seq, self.stable_u16, html))

    def _stable_html(self) -> str:
        """The rendered HTML of `text[:self.stable]`."""
        if self.blocks is not None:
            return "".join(self.blocks)
        return render_markdown(self.text[:self.stable])

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
                    await layer.send(event["reply_to"], events.snapshot(
                        self.seq, text[:self.sent], self.stable_u16, self._stable_html()))

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
            if self.answer.length != self.saved or now - last_beat >= heartbeat:
                text = self.text
                stop = await _save_partial(self.message_id, text)
                self.saved, last_beat = len(text), now
                if stop and not self.stop_requested:
                    self.request_stop()  # the stop event was missed; the flag was not

    # --- the end ------------------------------------------------------------------------
    async def _end(self, outcome: Outcome, helpers: list[asyncio.Task[Any]],
                   layer: Any, control: str | None) -> None:
        for task in helpers:
            task.cancel()
        await self._flush(final=True)
        message_id = self.message_id
        rendered = (self.text, self._stable_html()) if self.stable == len(self.text) else None
        saved = await persist(lambda o: _save_final(message_id, o, rendered), outcome,
                              what=f"answer {message_id}")
        if layer and control:
            with contextlib.suppress(Exception):  # its membership expires with the layer
                await layer.group_discard(events.generation_group(self.message_id), control)
        if saved is None:  # deleted meanwhile: nobody is left to tell
            return
        await events.publish(self.group, events.final_state_of(saved))
        if saved.status == MessageStatus.COMPLETE:
            # After the final frame, never before it: a first answer names its conversation.
            await titles.after_answer(saved.pk, self.language)

    async def _finish_quietly(self, helpers: list[asyncio.Task[Any]]) -> None:
        for task in helpers:
            task.cancel()
        message_id, outcome = self.message_id, self.answer.interrupted()
        try:
            await asyncio.shield(off_loop(_save_final)(message_id, outcome))
        except Exception:
            log.warning("could not save interrupted answer %s", self.message_id)


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


def _exclude(ids: list[uuid.UUID]) -> None:
    Message.objects.filter(pk__in=ids).update(context_excluded=True)


# The two reads of every answer's end, compiled once (chatsite/compiled.py).
_FINISHING = Compiled(lambda pk: Message.objects.select_related("model").filter(pk=pk),
                      pk=Message._meta.get_field("id"))
_LEDGER_ROW = Compiled(lambda message: UsageRecord.objects.filter(message=message),
                       message=UsageRecord._meta.get_field("message"))


def _save_final(message_id: uuid.UUID, outcome: Outcome,
                rendered: tuple[str, str] | None = None) -> Message | None:
    """The message's final fields and its ledger row; None when it was deleted meanwhile.
    `rendered`: (text, its HTML) when the streamed blocks already rendered the whole answer."""
    message = _FINISHING.first(pk=message_id)
    if message is None:
        return None
    for key, value in outcome_fields(outcome).items():
        setattr(message, key, value)
    if message.model and (message.prompt_tokens or message.completion_tokens):
        message.cost = message.model.cost(message.prompt_tokens, message.completion_tokens)
    message.heartbeat_at = timezone.now()
    message.save()
    if message.status == MessageStatus.COMPLETE:
        # Every open page fetches the finished message right away: have its HTML cached now.
        if rendered is not None and rendered[0] == message.content:
            remember_rendered(message.content, rendered[1])
        else:
            render_markdown_cached(message.content)
    usage = _LEDGER_ROW.first(message=message.pk)
    if usage is not None and message.model is not None:
        record_usage(usage, message.model, outcome)
    return message
