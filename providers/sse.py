"""One byte-level Server-Sent Events decoder for all three vendors.

Why byte level: the network splits a stream anywhere, including inside a multi-byte UTF-8
sequence and between the CR and the LF of a CRLF. Splitting lines on bytes first and decoding
each *complete* line afterwards makes both problems disappear: line terminators are ASCII, so
they never occur inside a multi-byte sequence, and a valid UTF-8 stream decodes without a
single U+FFFD however it was chunked. Invalid byte sequences are replaced, never raised.

Framing follows the WHATWG SSE parsing rules (CRLF, LF and CR all end a line; a blank line
ends an event; `:` starts a comment; one optional space after the field colon; consecutive
`data` lines are joined with LF), with three additions the vendors need:

* comments can be kept and attached to the event they precede (DashScope puts the HTTP status
  of each event in a `:HTTP_STATUS/200` comment);
* lines with an unknown field can be kept raw (Qianfan can put a bare JSON error object into
  an event stream);
* at EOF a partial trailing event is reported with `complete=False` instead of being dropped.

Size cap: an event (all its lines, including the line still being received) may not exceed
`max_event_bytes`. The check runs *before* the bytes are buffered, so a hostile 5 MB event never
sits in memory. Exceeding it raises
``ProviderError(BAD_REQUEST, vendor_code="sse_event_too_large")``: the upstream answer is
unusable and retrying the same request would most likely produce the same oversized event,
so the error is deliberately not retryable.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from dataclasses import dataclass

import httpx

from providers.base import ErrorKind, ProviderError
from providers.transport import body_chunks

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = "\ufeff"


@dataclass(slots=True)
class SSEEvent:
    """One dispatched event (read-only by convention: not frozen, as a frozen dataclass costs
    four times as much to make, once per token).

    `id` is the id set inside this event's own block (not the spec's sticky last-event-id),
    `comments` and `other_lines` are only filled when the decoder was asked to keep them.
    `complete` is False only for a partial event flushed at EOF.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None
    comments: tuple[str, ...] = ()
    other_lines: tuple[str, ...] = ()
    complete: bool = True


class SSEDecoder:
    """Incremental decoder: `feed()` bytes as they arrive, `close()` at EOF."""

    def __init__(
        self,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        keep_comments: bool = False,
        keep_other_lines: bool = False,
        provider: str = "The provider",
    ) -> None:
        self._max_event_bytes = max_event_bytes
        self._keep_comments = keep_comments
        self._keep_other_lines = keep_other_lines
        self._provider = provider
        self._line = bytearray()  # bytes of the line still being received
        self._skip_lf = False  # the previous chunk ended with CR: a leading LF belongs to it
        self._first_line = True  # a BOM is only stripped from the very first line
        self._event_bytes = 0  # bytes of complete lines in the current block
        self._reset_block()

    def _reset_block(self) -> None:
        self._data: list[str] = []
        self._event_type: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._comments: list[str] = []
        self._other: list[str] = []
        self._event_bytes = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume one chunk; return the events it completed (possibly none)."""
        events: list[SSEEvent] = []
        pos = 0
        size = len(chunk)
        if self._skip_lf and size:
            self._skip_lf = False
            if chunk[0] == 0x0A:
                pos = 1
        if b"\r" in chunk:
            self._feed_any_line_ends(chunk, pos, events)
            return events
        if (pos == 0 and chunk.startswith(b"data:") and chunk.endswith(b"\n\n")
                and not self._line and not self._event_bytes and not self._first_line
                and chunk.count(b"\n") == 2 and size - 1 <= self._max_event_bytes):
            # The usual chunk: one whole event of one data line, nothing pending. The same
            # event the lines below would make, without their per-line work (issue 16).
            value = chunk[6:-2] if chunk[5:6] == b" " else chunk[5:-2]
            return [SSEEvent(value.decode("utf-8", errors="replace"))]
        # Every vendor ends lines with LF: find them with bytes.find, and hand a line that lies
        # whole inside the chunk on as a slice, without copying it through the line buffer.
        while pos < size:
            end = chunk.find(b"\n", pos)
            if end < 0:
                self._check_cap(size - pos)
                self._line += chunk[pos:]
                break
            self._check_cap(end - pos)
            if self._line:
                self._line += chunk[pos:end]
                raw = bytes(self._line)
                self._line.clear()
            else:
                raw = chunk[pos:end]
            pos = end + 1
            event = self._finish_raw(raw, complete_block=True)
            if event is not None:
                events.append(event)
        return events

    def _feed_any_line_ends(self, chunk: bytes, pos: int, events: list[SSEEvent]) -> None:
        size = len(chunk)
        while pos < size:
            match = _LINE_END.search(chunk, pos)
            if match is None:
                self._check_cap(size - pos)
                self._line += chunk[pos:]
                break
            self._check_cap(match.start() - pos)
            self._line += chunk[pos : match.start()]
            # A CR at the very end of the chunk may be the first half of a CRLF.
            if match.group() == b"\r" and match.end() == size:
                self._skip_lf = True
            pos = match.end()
            event = self._finish_line(complete_block=True)
            if event is not None:
                events.append(event)

    def close(self) -> list[SSEEvent]:
        """End of stream: report a partial trailing event (complete=False) if there is one."""
        if self._line:
            self._finish_line(complete_block=False)
        self._skip_lf = False
        event = self._dispatch(complete=False)
        return [event] if event is not None else []

    def _check_cap(self, incoming: int) -> None:
        if self._event_bytes + len(self._line) + incoming > self._max_event_bytes:
            raise ProviderError(
                ErrorKind.BAD_REQUEST,
                f"{self._provider} sent a stream event larger than "
                f"{self._max_event_bytes} bytes; the answer was stopped.",
                vendor_code="sse_event_too_large",
            )

    def _finish_line(self, *, complete_block: bool) -> SSEEvent | None:
        raw = bytes(self._line)
        self._line.clear()
        return self._finish_raw(raw, complete_block=complete_block)

    def _finish_raw(self, raw: bytes, *, complete_block: bool) -> SSEEvent | None:
        self._event_bytes += len(raw) + 1
        text = raw.decode("utf-8", errors="replace")
        if self._first_line:
            self._first_line = False
            text = text.removeprefix(_BOM)
        if text == "":
            return self._dispatch(complete=complete_block)
        self._process_field(text)
        return None

    def _process_field(self, line: str) -> None:
        if line.startswith(":"):
            if self._keep_comments:
                self._comments.append(line[1:].removeprefix(" "))
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event_type = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self._retry = int(value)
        elif self._keep_other_lines:
            self._other.append(line)

    def _dispatch(self, *, complete: bool) -> SSEEvent | None:
        event: SSEEvent | None = None
        if self._data or self._comments or self._other:
            event = SSEEvent(
                data="\n".join(self._data),
                event=self._event_type or "message",
                id=self._id,
                retry=self._retry,
                comments=tuple(self._comments),
                other_lines=tuple(self._other),
                complete=complete,
            )
        self._reset_block()
        return event


def decode_all(
    body: bytes,
    *,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    keep_comments: bool = False,
    keep_other_lines: bool = False,
) -> list[SSEEvent]:
    """Decode a complete body in one go (error bodies, tests)."""
    decoder = SSEDecoder(
        max_event_bytes=max_event_bytes,
        keep_comments=keep_comments,
        keep_other_lines=keep_other_lines,
    )
    return [*decoder.feed(body), *decoder.close()]


class EventStream:
    """Events of a streamed httpx response, including a partial trailing one at EOF.

    `finish()` after the last event reads what is left of the body (normally only the
    terminating chunk): a response read to its end hands its connection back to the pool for
    the next answer (providers/pool.py); one closed early costs a new connection.
    """

    def __init__(self, response: httpx.Response, decoder: SSEDecoder) -> None:
        self._chunks = body_chunks(response)
        self._decoder = decoder
        self._pending: deque[SSEEvent] = deque()
        self._ended = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> SSEEvent:
        while not self._pending:
            if self._ended:
                raise StopAsyncIteration
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self._ended = True
                self._pending.extend(self._decoder.close())
                continue
            self._pending.extend(self._decoder.feed(chunk))
        return self._pending.popleft()

    async def finish(self, limit: int = 64 * 1024, wait: float = 0.5) -> None:
        """Read the rest of the body (at most `limit` bytes, `wait` seconds), ignoring it; a
        vendor that keeps writing or holds the stream open just gets its connection closed."""
        if self._ended:
            return
        read = 0
        try:
            async with asyncio.timeout(wait):
                async for chunk in self._chunks:
                    read += len(chunk)
                    if read > limit:
                        return
        except (TimeoutError, httpx.HTTPError):
            return
        self._ended = True


def aiter_events(response: httpx.Response, decoder: SSEDecoder) -> EventStream:
    return EventStream(response, decoder)
