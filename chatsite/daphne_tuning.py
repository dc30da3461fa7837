"""A websocket message over daphne's size limit is failed with a close frame, not a dropped line.

daphne (through autobahn) fails an oversized message (over 1 MiB) by dropping the TCP
connection, autobahn's `failByDrop` default: the browser sees 1006 and cannot tell why. With
`failByDrop` off, the connection is failed the way RFC 6455 describes: a close frame with 1009
(message too big), then the close. daphne has no option for it, so its factory's defaults are
set here, once, in a daphne server process (chatsite/asgi.py).

The server then waits for the client's closing frame before it closes the TCP connection.
autobahn waits 1 s by default; a client still writing its oversized message (10 MB from a phone,
or from a busy machine) is not done by then, the line is cut with the client's data unread, the
kernel answers with a reset, and the client loses the close frame it had not read yet. Five
seconds lets it finish writing and read why it was closed.

Frames are compressed (permessage-deflate) when the client offers it, as every browser does; see
`accept_deflate`. Both are the factory's defaults, set in one place (`websocket_defaults`).

Two more settings of the server process, both for speed: writes go to the socket at once
(`write_at_once`), and a thread waiting for the interpreter gets it sooner
(`hand_over_sooner`).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from autobahn.websocket.compress import (
    PERMESSAGE_COMPRESSION_EXTENSION,
    PerMessageDeflate,
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)
from daphne.access import AccessLogGenerator
from daphne.ws_protocol import WebSocketFactory
from twisted.internet import tcp

from chatsite.logging import redact

CLOSE_HANDSHAKE_SECONDS = 5
# The server's compressor per socket: a 4 KiB window still holds a finished block's deltas when
# its rendered HTML follows them, and zlib then allocates 38 KiB per socket instead of the 262
# KiB of its defaults (15, 8); (13, 6) takes 70 KiB for 7 % fewer bytes on the wire (measured
# with bench/wire.py, docs/performance.md).
DEFLATE_WINDOW_BITS = 12
DEFLATE_MEM_LEVEL = 5
# A socket that sent nothing for this long gives its compressor back: most sockets are open
# pages between answers, and would otherwise each hold those 38 KiB for nothing.
DEFLATE_IDLE_SECONDS = 10.0


def redact_access_log() -> None:
    """daphne's access log (stdout at its default verbosity) writes every request path; share
    links, invitations and signed image addresses carry their secret in the path, and the
    sign-in callback its code in the query. They are written redacted, as our own logs are."""
    if getattr(AccessLogGenerator, "_redacted", False):
        return
    original = AccessLogGenerator.write_entry

    def write_entry(self: Any, host: Any, date: Any, request: str, *args: Any,
                    **kwargs: Any) -> None:
        original(self, host, date, redact(request), *args, **kwargs)

    AccessLogGenerator.write_entry = write_entry  # type: ignore[method-assign]
    AccessLogGenerator._redacted = True  # type: ignore[attr-defined]


def accept_deflate(offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
    """Accept the client's first permessage-deflate offer, keeping the context between messages
    (unless the client asks otherwise) with a smaller window than zlib's default. A window
    smaller than the one the client decompresses with is always valid (RFC 7692, 7.1.2.1), so
    nothing is announced for it.

    A rendered block (`b` frame) repeats the text its deltas carried a moment before, and every
    delta starts alike; with the context kept between messages, a realistic answer takes less
    than half the bytes on the wire (docs/performance.md). Nothing secret shares a socket with
    text a reader does not already see (one socket shows one conversation to someone who may
    read all of it), so the length of a compressed frame tells an eavesdropper nothing new (the
    CRIME/BREACH concern; docs/security.md). Inflating what a client sends stays bounded by
    daphne's 1 MiB message limit (autobahn stops inflating there and closes with 1009)."""
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            bits = DEFLATE_WINDOW_BITS
            if offer.request_max_window_bits:
                bits = min(bits, offer.request_max_window_bits)
            return PerMessageDeflateOfferAccept(offer, window_bits=max(bits, 9),
                                                mem_level=DEFLATE_MEM_LEVEL)
    return None


class IdleReleasingDeflate(PerMessageDeflate):  # type: ignore[misc]
    """autobahn's permessage-deflate, whose compressor is freed after DEFLATE_IDLE_SECONDS
    without a message and made anew for the next one.

    That is always valid: a fresh compressor's output never refers to earlier messages, and
    the client's decompressor, which keeps its window, inflates it the same (what
    `server_no_context_takeover` would announce, done only after a quiet spell, so streamed
    answers keep the whole gain). One timer per socket at most, re-armed when it fires."""

    _last_message = 0.0
    _release_timer: asyncio.TimerHandle | None = None

    def end_compress_message(self) -> bytes:
        data: bytes = super().end_compress_message()
        self._last_message = time.monotonic()
        if self._release_timer is None:
            self._arm(DEFLATE_IDLE_SECONDS)
        return data

    def _arm(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on a loop: keep the compressor
            return
        self._release_timer = loop.call_later(delay, self.release_if_idle)

    def release_if_idle(self) -> None:
        self._release_timer = None
        idle = time.monotonic() - self._last_message
        if idle >= DEFLATE_IDLE_SECONDS:
            self._compressor = None
        else:
            self._arm(DEFLATE_IDLE_SECONDS - idle)


def websocket_defaults(compress: bool) -> None:
    """daphne's websocket factory defaults, set once per process: fail an oversized message
    with a close frame (module docstring) and, with `compress`, accept permessage-deflate
    (`accept_deflate`; `WEBSOCKET_COMPRESSION=0` turns it off)."""
    if getattr(WebSocketFactory, "_chatsite_defaults", False):
        return
    original = WebSocketFactory.resetProtocolOptions

    def reset_protocol_options(self: Any) -> None:
        original(self)
        self.failByDrop = False
        self.closeHandshakeTimeout = CLOSE_HANDSHAKE_SECONDS
        if compress:
            self.perMessageCompressionAccept = accept_deflate

    WebSocketFactory.resetProtocolOptions = reset_protocol_options  # type: ignore[method-assign]
    WebSocketFactory._chatsite_defaults = True  # type: ignore[attr-defined]
    if compress:
        # autobahn makes the agreed extension from this table (its handshake code reads it).
        PERMESSAGE_COMPRESSION_EXTENSION[PerMessageDeflate.EXTENSION_NAME]["PMCE"] = (
            IdleReleasingDeflate)


# A write sequence up to this size is joined into one write (`write_at_once`); a streamed
# answer's chunks are tens to hundreds of bytes.
JOIN_AT_MOST = 64 * 1024


def write_at_once() -> None:
    """A TCP write goes to the socket at once when nothing is queued before it.

    Twisted queues every write and asks the reactor to watch the socket for writability: on
    the asyncio reactor that is an epoll registration now and a removal after the next turn of
    the loop, for every websocket frame and every chunk of a streamed response, though the
    kernel's buffer almost always has room. py-spy at 32 streams put that round trip at about
    a tenth of the app's CPU. Here a write with nothing queued before it is handed to the
    socket directly (twisted's own `writeSomeData`); what the kernel does not take, and every
    write while something is queued, goes the usual way, so order and back-pressure (a
    producer paused on a full buffer) are twisted's. TLS connections are left as they are.

    A chunk of a chunked HTTP response (every piece of a streamed `/v1` answer) comes as
    `writeSequence` of three pieces, the size line, the data and a CRLF, which twisted never
    hands to `write`: the pieces are joined and take the same way. Sequences larger than
    `JOIN_AT_MOST` keep twisted's own path rather than be copied."""
    if getattr(tcp.Connection, "_writes_at_once", False):
        return
    original = tcp.Connection.write
    original_sequence = tcp.Connection.writeSequence

    def write(self: Any, data: bytes) -> None:
        if (data and not self.TLS and self.connected and not self.disconnecting
                and not self._writeDisconnected and not self._writeDisconnecting
                and not self._tempDataBuffer and self.offset == len(self.dataBuffer)):
            sent = self.writeSomeData(data)
            if isinstance(sent, int) and sent > 0:  # else an error: the usual way reports it
                data = data[sent:]
        original(self, data)

    def write_sequence(self: Any, iovec: Any) -> None:
        if (self.TLS or not isinstance(iovec, list | tuple)
                or sum(len(piece) for piece in iovec) > JOIN_AT_MOST):
            original_sequence(self, iovec)
        else:  # b"".join refuses a str piece with a TypeError, as twisted's own check does
            write(self, b"".join(iovec))

    tcp.Connection.write = write  # type: ignore[method-assign]
    tcp.Connection.writeSequence = write_sequence  # type: ignore[method-assign]
    tcp.Connection._writes_at_once = True  # type: ignore[attr-defined]


# Seconds a thread may hold the interpreter while another waits for it (CPython's default is
# 0.005). See `hand_over_sooner`.
SWITCH_INTERVAL = 0.001


def hand_over_sooner() -> None:
    """Let a thread waiting for the interpreter have it after 1 ms, not CPython's 5 ms.

    A burst of posts runs many request threads beside the event loop. SQLite lets one write
    transaction in at a time, and the thread holding it gives up the interpreter at every
    statement (the sqlite3 module releases it around each call into SQLite); taking it back
    waited up to the switch interval behind whichever thread had it meanwhile. So a
    transaction of a dozen statements held the write lock for tens of milliseconds, and the
    other posts queued behind it. The same wait delayed tokens flowing on the loop. With 64
    posts within a second (`bench/relay.py --k 64 --spread 1`, two runs each, interleaved), 5
    ms against 1 ms: POST p50/p99 233-268 / 402-414 ms against 100-156 / 179-233 ms, and the
    first token's p99 delay after the vendor sent it 106-123 ms against 43-68 ms, with the CPU
    per token unchanged within noise (docs/performance.md)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
