"""A deliberately small HTTP/1.1 layer over asyncio streams.

Hand-written so the emulator controls every byte and every write boundary: each call to
`Connection.write` is one `transport.write` (one `send()` with TCP_NODELAY, which asyncio sets
on TCP sockets) and, with chunked framing, exactly one HTTP chunk. Clients built on h11/httpx
hand each chunk to the caller separately, so a split in the middle of a UTF-8 sequence or
between CR and LF reaches the client's decoder as two pieces.

Connections are persistent (HTTP/1.1 keep-alive) when the server allows it and the request
does not say ``Connection: close``: a response that ends cleanly leaves the connection open
for the next request. Faults that cut a response short, close-delimited bodies and refused
requests close it, as a real server would.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

MAX_HEADER_BYTES = 64 * 1024
Framing = Literal["chunked", "close", "length"]


class HttpError(Exception):
    """A request we refuse before routing it (malformed, too large, ...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class HttpRequest:
    method: str
    target: str
    path: str  # percent-decoded, without the query string
    raw_path: str
    query: dict[str, str]  # first value of each parameter
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    version: str = "HTTP/1.1"

    @property
    def wants_keep_alive(self) -> bool:
        """HTTP/1.1 persists unless told to close; HTTP/1.0 only when asked to keep alive."""
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


async def read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_body: int
) -> HttpRequest | None:
    """Read one request; None when the client closed before sending anything."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise HttpError(400, "incomplete request head") from None
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request head too large") from None
    if len(head) > MAX_HEADER_BYTES:
        raise HttpError(431, "request head too large")
    method, target, version, headers = _parse_head(head)
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = await _read_body(reader, headers, max_body)
    split = urlsplit(target)
    return HttpRequest(
        method=method,
        target=target,
        path=unquote(split.path),
        raw_path=split.path,
        query=dict(reversed(parse_qsl(split.query, keep_blank_values=True))),
        headers=headers,
        body=body,
        version=version,
    )


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
    except ValueError:
        raise HttpError(400, "malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise HttpError(505, "only HTTP/1.x is spoken here")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(400, "malformed header line")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return method.upper(), target, version, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], max_body: int) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader, max_body)
    length_text = headers.get("content-length")
    if length_text is None:
        return b""
    try:
        length = int(length_text)
    except ValueError:
        raise HttpError(400, "bad Content-Length") from None
    if length < 0:
        raise HttpError(400, "bad Content-Length")
    if length > max_body:
        raise HttpError(413, "request body too large")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise HttpError(400, "request body shorter than Content-Length") from None


async def _read_chunked(reader: asyncio.StreamReader, max_body: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    try:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip() or b"x", 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers are read and ignored
                return b"".join(parts)
            total += size
            if total > max_body:
                raise HttpError(413, "request body too large")
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        raise HttpError(400, "malformed chunked request body") from None


class Connection:
    """Writes one response. Every `write` call is one write boundary on the wire.

    `keep_alive` (set before `start`) lets a cleanly finished response leave the socket open;
    `reusable` tells the server afterwards whether it may read the next request from it.
    """

    def __init__(self, writer: asyncio.StreamWriter, *, keep_alive: bool = False) -> None:
        self.writer = writer
        self.keep_alive = keep_alive
        self.reusable = False
        self.framing: Framing = "length"
        self.started = False
        self.status = 0

    async def start(
        self,
        status: int,
        headers: Iterable[tuple[str, str]],
        *,
        framing: Framing,
        content_length: int | None = None,
    ) -> None:
        self.framing = framing
        self.status = status
        self.started = True
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines.extend(f"{name}: {value}" for name, value in headers)
        if framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
        elif framing == "length":
            lines.append(f"Content-Length: {content_length or 0}")
        if framing == "close":
            self.keep_alive = False  # the body ends where the connection does
        if not self.keep_alive:
            lines.append("Connection: close")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await self.writer.drain()

    async def write(self, data: bytes) -> None:
        if not data:
            return
        if self.framing == "chunked":
            self.writer.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.writer.write(data)
        await self.writer.drain()

    async def finish(self) -> None:
        """End the body properly (terminating chunk); close unless the connection persists."""
        if self.framing == "chunked":
            self.writer.write(b"0\r\n\r\n")
        if not self.keep_alive:
            await self.close()
            return
        try:
            await self.writer.drain()
        except (ConnectionError, OSError):
            return
        self.reusable = True

    async def close(self) -> None:
        """Close after flushing whatever was written; for chunked framing without the
        terminating chunk, the client sees an incomplete body."""
        self.keep_alive = self.reusable = False
        try:
            await self.writer.drain()
            self.writer.close()
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    async def reset(self) -> None:
        """Flush, then close with an RST (SO_LINGER 0) instead of a FIN."""
        self.keep_alive = self.reusable = False
        try:
            await self.writer.drain()
            await _wait_flushed(self.writer)
            sock = self.writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.writer.transport.abort()
        except (ConnectionError, OSError):
            pass

    async def send(self, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        await self.start(status, headers, framing="length", content_length=len(body))
        await self.write(body)
        await self.finish()


async def _wait_flushed(writer: asyncio.StreamWriter, limit: float = 2.0) -> None:
    """Wait until the transport's buffer is empty (abort() would discard it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while writer.transport.get_write_buffer_size() and loop.time() < deadline:
        await asyncio.sleep(0.005)
