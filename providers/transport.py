"""The vendor connections' network layer: an httpcore backend on a plain asyncio protocol.

httpx reaches the network through httpcore, and on asyncio httpcore reads through anyio's
socket stream. That stream pauses the transport after every read and resumes it before the
next, and wraps every read in a cancel scope for its timeout. For a streamed answer that is two
`epoll_ctl` system calls and a cancel scope per token (the sixth session's `strace` and py-spy,
docs/performance.md). This backend keeps reading while data comes, buffers it in the protocol
(bounded: it pauses the socket above `HIGH_WATER`), and times reads with one timer per stream
that is re-armed only when it fires, so a read that finds data waiting costs no system call and
no event-loop turn.

Everything else is httpcore's and httpx's: HTTP/1.1 framing, the connection pool, keep-alive,
TLS verification (the same `ssl.SSLContext`, through asyncio's `start_tls`), and the exception
types callers already map (`providers.retry.TransportErrors`).

One exception to the framing, for the streamed answers (`body_chunks`): a chunked body on one
of these connections is decoded here, from the stream's bytes, rather than by h11 one event at
a time through httpcore's and httpx's layers. That path was a third of the app's CPU with 128
answers streaming (issue 16, py-spy). h11 still reads the status line and the headers, and
reads the body's last chunk and trailer itself (this decoder hands them back to the stream),
so the connection ends its response exactly as h11 expects and goes back to the pool. h11 is
handed a response's bytes only up to the end of its header block, so it holds none of the body
when the decoder starts; should it hold some (after a `1xx` response), h11 reads the body.
"""

from __future__ import annotations

import asyncio
import collections
import re
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import httpcore
import httpx
from httpcore import SOCKET_OPTION, AsyncNetworkBackend, AsyncNetworkStream

# Bytes buffered before the socket is paused, and the level at which it resumes. A vendor's
# stream is small events; only a large non-streamed body (a probe's error page) comes near.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# Happy Eyeballs (RFC 8305), as anyio's connect does: a vendor's IPv6 address that does not
# answer costs a quarter second, not the connect timeout.
HAPPY_EYEBALLS_DELAY = 0.25
# h11's limits and grammar for what this module reads itself: a header block ends at the first
# blank line (LF CR? LF); a chunk's size line is 1-20 hex digits, an optional extension, spaces.
MAX_LINE = 100 * 1024  # httpcore's MAX_INCOMPLETE_EVENT_SIZE
_BLANK_LINE = re.compile(rb"\n\r?\n")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*")


class _Protocol(asyncio.Protocol):
    """Reads whatever arrives into a queue of chunks; `_Stream` hands them out."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.eof = False
        self.error: BaseException | None = None
        self.reading_paused = False
        self.waiter: asyncio.Future[bool] | None = None
        self.drain_waiter: asyncio.Future[bool] | None = None
        self.writing_paused = False

    # asyncio's callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called again with the TLS transport after `start_tls`.
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # let the transport close itself: HTTP/1.1 never half-closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None:
            self.error = exc
        self._wake()
        self._wake_drain()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_drain()

    # helpers for `_Stream`

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _wake_drain(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def unread(self, data: bytes) -> None:
        self.chunks.appendleft(data)
        self.buffered += len(data)

    def take(self, max_bytes: int) -> bytes:
        chunk = self.chunks.popleft()
        if len(chunk) > max_bytes:
            self.chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self.buffered -= len(chunk)
        if self.reading_paused and self.buffered <= LOW_WATER and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        return chunk


class _Deadline:
    """One timer per stream for its read timeouts.

    A read that has to wait sets a deadline; the timer is scheduled only if none is pending, and
    when it fires early (the deadline moved on because reads kept succeeding) it re-arms itself
    for the current deadline. A stream reading 50 events a second at a 60 s timeout so touches
    the loop's timer heap about once a minute, not 50 times a second.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, expire: Callable[[], None]) -> None:
        self.loop = loop
        self.expire = expire
        self.at = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def arm(self, timeout: float) -> None:
        self.at = self.loop.time() + timeout
        timer = self.timer
        if timer is not None and timer.when() <= self.at:
            return
        if timer is not None:
            timer.cancel()
        self.timer = self.loop.call_at(self.at, self._fire)

    def _fire(self) -> None:
        self.timer = None
        if self.loop.time() >= self.at:
            self.expire()
        else:
            self.timer = self.loop.call_at(self.at, self._fire)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Stream(AsyncNetworkStream):
    def __init__(self, protocol: _Protocol, backend: ProtocolBackend) -> None:
        self._protocol = protocol
        self._backend = backend
        self._deadline = _Deadline(protocol.loop, self._read_timed_out)
        # Where h11 stands in the current response: its bytes until the header block ended
        # (None after), then how many bytes of the body it was handed (-1: unknown).
        self._head: bytearray | None = None
        self._body_handed = -1

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        while not protocol.chunks:
            if protocol.eof:
                if protocol.error is not None:
                    raise httpcore.ReadError(str(protocol.error) or type(protocol.error).__name__)
                return b""
            if not await self._wait_for_data(timeout):
                raise httpcore.ReadTimeout("The vendor sent nothing within the read timeout")
        chunk = protocol.take(max_bytes)
        if self._head is not None:
            return self._see_head(chunk)
        if self._body_handed >= 0:
            self._body_handed += len(chunk)
        return chunk

    def _see_head(self, chunk: bytes) -> bytes:
        """`chunk`, up to the end of the response's header block: what comes after it (the
        body's first bytes, sent with the headers) waits in the protocol for the body's
        reader, so that h11 holds none of the body when `chunked_body` may start."""
        head = self._head
        assert head is not None
        start = max(0, len(head) - 2)
        head += chunk
        blank = _BLANK_LINE.search(head, start)
        if blank is None:
            if len(head) > MAX_LINE:  # h11 refuses it anyway
                self._head = None
            return chunk
        self._head = None
        self._body_handed = 0
        after = len(head) - blank.end()  # < len(chunk): the blank line ends in this chunk
        if not after:
            return chunk
        self._protocol.unread(chunk[-after:])
        return chunk[:-after]

    # --- the body of a streamed answer, decoded here (see the module's docstring) ------------

    def holds_whole_body(self) -> bool:
        """Whether no byte after the response's header block has been read (into h11)."""
        return self._head is None and self._body_handed == 0

    async def chunked_body(self, timeout: float | None) -> AsyncIterator[bytes]:
        """The data of a chunked body, read from here; its last chunk and trailer are handed
        back to the stream for h11. Raises httpcore's ReadError, ReadTimeout and
        RemoteProtocolError, as h11 and httpcore would."""
        if not self.holds_whole_body():
            raise RuntimeError("h11 has already read part of this body")
        self._body_handed = -1
        self._backend.chunked_bodies += 1
        buffer = b""
        while True:
            end = buffer.find(b"\r\n")
            while end < 0:
                if len(buffer) > MAX_LINE:
                    raise httpcore.RemoteProtocolError("illegal chunk header: too long")
                searched = max(0, len(buffer) - 1)
                buffer += await self._body_read(timeout)
                end = buffer.find(b"\r\n", searched)
            size_line = _CHUNK_SIZE.fullmatch(buffer, 0, end)
            if size_line is None:
                raise httpcore.RemoteProtocolError(
                    f"illegal chunk header: {buffer[:min(end, 40)]!r}")
            left = int(size_line[1], 16)
            if left == 0:
                self._protocol.unread(buffer)  # the last chunk and the trailer: h11 reads them
                return
            buffer = buffer[end + 2:]
            while left:
                if not buffer:
                    buffer = await self._body_read(timeout)
                if len(buffer) <= left:
                    piece, buffer = buffer, b""
                else:
                    piece, buffer = buffer[:left], buffer[left:]
                left -= len(piece)
                yield piece
            while len(buffer) < 2:
                buffer += await self._body_read(timeout)
            if buffer[:2] != b"\r\n":
                raise httpcore.RemoteProtocolError(
                    f"malformed chunk footer: {buffer[:2]!r} (expected b'\\r\\n')")
            buffer = buffer[2:]

    async def _body_read(self, timeout: float | None) -> bytes:
        data = await self.read(65536, timeout)
        if not data:
            raise httpcore.RemoteProtocolError(
                "peer closed connection without sending complete message body "
                "(incomplete chunked read)")
        return data

    async def _wait_for_data(self, timeout: float | None) -> bool:
        protocol = self._protocol
        waiter: asyncio.Future[bool] = protocol.loop.create_future()
        protocol.waiter = waiter
        if timeout is not None:
            self._deadline.arm(timeout)
        try:
            return await waiter
        finally:
            protocol.waiter = None

    def _read_timed_out(self) -> None:
        waiter = self._protocol.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(False)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        self._head, self._body_handed = bytearray(), -1  # a request: its response comes next
        protocol = self._protocol
        transport = protocol.transport
        if transport is None or transport.is_closing() or protocol.eof:
            raise httpcore.WriteError("The connection to the vendor is closed")
        transport.write(buffer)
        if not protocol.writing_paused:
            return
        waiter = protocol.loop.create_future()
        protocol.drain_waiter = waiter
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            raise httpcore.WriteTimeout("The vendor took no data within the timeout") from None
        finally:
            protocol.drain_waiter = None
        if protocol.error is not None:
            raise httpcore.WriteError(str(protocol.error) or type(protocol.error).__name__)

    async def aclose(self) -> None:
        self._deadline.cancel()
        transport = self._protocol.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> AsyncNetworkStream:
        protocol = self._protocol
        transport = protocol.transport
        if transport is None or transport.is_closing():
            raise httpcore.ConnectError("The connection closed before TLS began")
        try:
            async with asyncio.timeout(timeout):
                tls = await protocol.loop.start_tls(transport, protocol, ssl_context,
                                                    server_hostname=server_hostname)
        except TimeoutError:
            transport.abort()
            raise httpcore.ConnectTimeout("The TLS handshake timed out") from None
        except (OSError, ssl.SSLError) as exc:  # a refused certificate is an SSLError
            transport.abort()
            raise httpcore.ConnectError(str(exc)) from exc
        assert tls is not None and isinstance(tls, asyncio.Transport)
        protocol.transport = tls
        return _Stream(protocol, self._backend)

    def get_extra_info(self, info: str) -> Any:
        protocol = self._protocol
        transport = protocol.transport
        if info == "is_readable":
            # httpcore asks this of an idle pooled connection: readable means the server sent
            # something (an EOF, in practice), so the connection must not be reused.
            return bool(protocol.chunks) or protocol.eof
        if transport is None:
            return None
        name = {"ssl_object": "ssl_object", "client_addr": "sockname",
                "server_addr": "peername", "socket": "socket"}.get(info)
        return transport.get_extra_info(name) if name else None


class ProtocolBackend(AsyncNetworkBackend):
    """httpcore's network backend for the vendor clients (asyncio only, which is all we run)."""

    def __init__(self) -> None:
        self.opened = 0  # connections made: what a test counts to see the pool is ours
        self.chunked_bodies = 0  # bodies `body_chunks` decoded itself (a test counts them)

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[SOCKET_OPTION] | None = None,
                          ) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        protocol = _Protocol(loop)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: protocol, host, port,
                    local_addr=(local_address, 0) if local_address else None,
                    happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY)
        except TimeoutError:
            raise httpcore.ConnectTimeout("Connecting to the vendor timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        _apply(protocol, socket_options)
        self.opened += 1
        return _Stream(protocol, self)

    # No `connect_unix_socket`: vendors are reached over TCP only (httpcore's base class
    # refuses a Unix socket path).

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _apply(protocol: _Protocol, options: Iterable[SOCKET_OPTION] | None) -> None:
    # asyncio has already set TCP_NODELAY on a TCP socket; these are the caller's extra ones.
    sock: socket.socket | None = (protocol.transport.get_extra_info("socket")
                                  if protocol.transport is not None else None)
    for option in options or ():
        if sock is not None:
            sock.setsockopt(*option)


class VendorTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport with its connection pool on `ProtocolBackend`.

    httpx builds its pool in `__init__` and offers no argument for the network backend, so the
    pool is built again here with the same settings; `tests/providers/test_transport.py` checks
    that the connections really are ours, so an httpx upgrade that changes this is caught.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> None:
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        self.backend = ProtocolBackend()
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True, http2=False,
            network_backend=self.backend)


async def body_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body of a streamed response, as `response.aiter_bytes()` gives it, with the same
    exceptions. A chunked, unencoded body on one of our connections, of which h11 holds no byte
    yet, is decoded here (the module's docstring); any other body is httpx's."""
    stream = response.extensions.get("network_stream")
    if not (isinstance(stream, _Stream) and _plainly_chunked(response)
            and stream.holds_whole_body()):
        async for chunk in response.aiter_bytes():
            yield chunk
        return
    request = response.request
    timeout = request.extensions.get("timeout", {}).get("read")
    try:
        async for chunk in stream.chunked_body(timeout):
            yield chunk
    except httpcore.ReadTimeout as exc:
        raise httpx.ReadTimeout(str(exc), request=request) from exc
    except httpcore.ReadError as exc:
        raise httpx.ReadError(str(exc), request=request) from exc
    except httpcore.RemoteProtocolError as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    # h11 reads the last chunk handed back: the response ends and its connection is reusable.
    async for chunk in response.aiter_raw():
        yield chunk  # nothing: the last chunk carries no data


def _plainly_chunked(response: httpx.Response) -> bool:
    headers = response.headers
    return (headers.get("transfer-encoding", "").strip().lower() == "chunked"
            and headers.get("content-encoding", "identity").strip().lower() == "identity"
            and response.request.method != "HEAD" and response.status_code >= 200
            and response.status_code not in (204, 304))


__all__ = ["HIGH_WATER", "LOW_WATER", "ProtocolBackend", "VendorTransport", "body_chunks"]
