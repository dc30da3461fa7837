"""Replies and the delivery engine: pacing, timestamps, line endings and write boundaries.

Vendor modules describe *what* to send (a `FullReply`, or a `StreamReply` whose frames are
produced lazily); this module decides *how* the bytes hit the socket according to the `Plan`:
when (ttft, rate), in how many writes (utf8-split, byte-by-byte, crlf split,
multi-event-chunk), with which line endings (crlf, cr), with `: keep-alive` comments, and how
the stream ends (properly, dropped, stalled).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from providers.emulators.faults import Plan
from providers.emulators.http import Connection

KEEP_ALIVE = b": keep-alive\n\n"
_ALL_EVENTS = 1 << 30  # "as if every event were sent": makes any drop/stall fire
_MULTIBYTE_LEAD = re.compile(rb"[\xc2-\xf4]")


@dataclass(frozen=True, slots=True)
class Frame:
    """One unit of a stream, normally one SSE event.

    Stamped frames get the monotonic send time inserted between `head` and `tail` at the moment
    they are written, so a benchmark can measure delivery latency. Paced frames wait for their
    slot (ttft for the first, then one every 1/rate seconds); unpaced frames follow at once.
    """

    head: bytes
    tail: bytes = b""
    stamped: bool = False
    paced: bool = False
    text: str = ""  # the answer text this frame adds (tests compare it with what was stored)


@dataclass
class FullReply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    delay: float = 0.0  # "generation" time before the response starts
    answer: bool = False  # a model answer (drop/stall faults cut these, never error replies)


@dataclass
class StreamReply:
    status: int
    headers: list[tuple[str, str]]
    frames: Iterator[Frame]
    extra: dict[str, Any] = field(default_factory=dict)


Reply = FullReply | StreamReply


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(obj: Any) -> bytes:
    """Compact JSON with raw UTF-8, as the vendors send it (multi-byte bytes on the wire)."""
    return _ENCODER.encode(obj).encode()


def json_frame(
    lead: bytes, obj: dict[str, Any], trail: bytes, *, stamp: bool, paced: bool, adds: str = ""
) -> Frame:
    """A frame whose JSON object gets a trailing ``"ts":<monotonic>`` key when stamped."""
    text = dumps(obj)
    if stamp and obj:
        return Frame(lead + text[:-1] + b',"ts":', b"}" + trail, stamped=True, paced=paced,
                     text=adds)
    return Frame(lead + text + trail, paced=paced, text=adds)


def json_reply(
    status: int,
    obj: Any,
    headers: Iterable[tuple[str, str]] = (),
    *,
    delay: float = 0.0,
    answer: bool = False,
) -> FullReply:
    all_headers = [("Content-Type", "application/json"), *headers]
    return FullReply(status, all_headers, dumps(obj), delay, answer)


class Pacer:
    """Absolute deadlines (arrival + ttft + i/rate), so pacing never drifts."""

    def __init__(self, start: float, ttft: float, rate: float | None) -> None:
        self.start = start
        self.ttft = ttft
        self.rate = rate
        self.index = 0

    async def wait(self) -> None:
        due = self.start + self.ttft
        if self.rate:
            due += self.index / self.rate
        self.index += 1
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def render(frame: Frame, plan: Plan) -> bytes:
    data = frame.head
    if frame.stamped:
        data += b"%.6f" % time.monotonic() + frame.tail
    else:
        data += frame.tail
    if plan.eol != b"\n":
        data = data.replace(b"\n", plan.eol)
    return data


def cut_points(data: bytes, plan: Plan) -> list[int]:
    """Offsets inside `data` where a write boundary goes, according to the split faults."""
    if plan.byte_by_byte:
        return list(range(1, len(data)))
    cuts: set[int] = set()
    if plan.utf8_split:
        for count, match in enumerate(_MULTIBYTE_LEAD.finditer(data)):
            start = match.start()
            lead = data[start]
            length = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
            # Vary the cut so 1-of-2, 1-of-3, 2-of-3, 1..3-of-4 all occur.
            cuts.add(start + 1 + count % (length - 1))
    if plan.split_crlf and plan.eol == b"\r\n":
        index = data.find(b"\r\n")
        if index >= 0:
            cuts.add(index + 1)
    return sorted(c for c in cuts if 0 < c < len(data))


async def write_split(conn: Connection, data: bytes, plan: Plan) -> None:
    if not (plan.byte_by_byte or plan.utf8_split or plan.split_crlf):
        await conn.write(data)  # the common case, kept cheap for 500-stream benchmarks
        return
    start = 0
    for cut in cut_points(data, plan):
        await conn.write(data[start:cut])
        start = cut
        if plan.gap:
            await asyncio.sleep(plan.gap)
    await conn.write(data[start:])


def _with_comments(frames: Iterator[Frame], plan: Plan) -> Iterator[Frame]:
    for frame in frames:
        if plan.comments:
            yield Frame(KEEP_ALIVE)
        yield frame


async def deliver_stream(
    conn: Connection, reply: StreamReply, plan: Plan, arrived: float, sent: list[str] | None = None
) -> str:
    """Send a streamed reply; returns the outcome ("complete", "dropped", "stalled").

    `sent` collects the answer text of every frame written, in order.
    """
    await conn.start(
        reply.status, reply.headers, framing="close" if plan.close_delimited else "chunked"
    )
    pacer = Pacer(arrived, plan.ttft, plan.rate)
    sent_events = 0
    pending = bytearray()
    pending_count = 0

    async def flush() -> None:
        nonlocal pending_count
        if pending:
            await write_split(conn, bytes(pending), plan)
            pending.clear()
        pending_count = 0

    outcome = await _cut_short(conn, plan, sent_events)
    if outcome:
        return outcome
    for frame in _with_comments(reply.frames, plan):
        if frame.paced:
            await pacer.wait()
        pending.extend(render(frame, plan))
        pending_count += 1
        if sent is not None and frame.text:
            sent.append(frame.text)
        if pending_count >= plan.group:
            await flush()
        if frame.paced:
            sent_events += 1
            if _stops_here(plan, sent_events):
                await flush()
                return await _cut_short(conn, plan, sent_events) or "complete"
    await flush()
    await conn.finish()
    return "complete"


def _stops_here(plan: Plan, sent_events: int) -> bool:
    return sent_events in (plan.drop_after, plan.stall_after)


async def _cut_short(conn: Connection, plan: Plan, sent_events: int) -> str | None:
    """Drop or stall the stream if this is the event count the plan asked for."""
    if plan.drop_after is not None and sent_events >= plan.drop_after:
        await (conn.reset() if plan.rst else conn.close())
        return "dropped"
    if plan.stall_after is not None and sent_events >= plan.stall_after:
        await asyncio.sleep(plan.stall_seconds)
        await conn.close()
        return "stalled"
    return None


async def deliver_full(conn: Connection, reply: FullReply, plan: Plan) -> str:
    """Send a complete (Content-Length) reply; drop/stall cut it in the middle of the body."""
    if reply.delay > 0:
        await asyncio.sleep(reply.delay)
    await conn.start(reply.status, reply.headers, framing="length", content_length=len(reply.body))
    body = reply.body
    if reply.answer and (plan.drop_after is not None or plan.stall_after is not None):
        await write_split(conn, body[: len(body) // 2], plan)
        return await _cut_short(conn, plan, _ALL_EVENTS) or "complete"
    await write_split(conn, body, plan)
    await conn.finish()
    return "complete"
