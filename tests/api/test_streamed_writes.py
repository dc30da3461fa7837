"""A streamed answer's chunks go to the socket at once (chatsite/daphne_tuning.py, `write_at_once`
on twisted's `writeSequence`), and what the kernel does not take is queued the usual way: a long
answer read slowly through a small receive buffer arrives whole and in order, the same text a
fast reader gets."""

from __future__ import annotations

import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.api.conftest import ApiServer, openai_client

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = "Tell me everything [[emu:tokens n=25000]]"


def _unchunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        assert rest[size:size + 2] == b"\r\n", "a chunk must end with CRLF"
        out += rest[:size]
        body = rest[size + 2:]
    return bytes(out)


def _slow_stream(url: str, secret: str, chunk: int = 4096) -> bytes:
    """POST a streamed completion over a socket with a small receive buffer, read a little at
    a time with pauses, so the server's kernel buffer fills and its writes are partial."""
    parts = urlsplit(url)
    body = json.dumps({"model": "llama-3.2-3b", "stream": True, "max_tokens": 30000,
                       "messages": [{"role": "user", "content": PROMPT}]}).encode()
    with socket.socket() as sock:
        # Before connecting: the window this socket offers follows its buffer from the start.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, chunk)
        sock.connect((parts.hostname, parts.port))
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                     f"Authorization: Bearer {secret}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        # Nothing read for a second: the server's socket buffer fills within its first writes
        # and the rest of the answer waits in twisted's queue, then drains as this reads.
        time.sleep(1.0)
        received = bytearray()
        reads = 0
        while True:
            data = sock.recv(chunk)
            if not data:
                break
            received += data
            reads += 1
            if reads % 16 == 0:
                time.sleep(0.01)
    head, _, rest = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:300]
    assert b"transfer-encoding: chunked" in head.lower()
    return _unchunk(rest)


def _text_of(sse: bytes) -> tuple[str, bool]:
    text, done = [], False
    for event in sse.decode().split("\n\n"):
        data = event.removeprefix("data: ").strip()
        if not data:
            continue
        if data == "[DONE]":
            done = True
            continue
        for choice in json.loads(data).get("choices") or []:
            text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text), done


def test_a_long_streamed_answer_read_slowly_arrives_whole_and_in_order(
        api_server: ApiServer, emulated: Any, owner: Any, make_token: Any) -> None:
    secret = make_token(owner)
    fast = openai_client(api_server, secret).chat.completions.create(
        model="llama-3.2-3b", stream=True, max_tokens=30000,
        messages=[{"role": "user", "content": PROMPT}])
    fast_text = "".join(c.choices[0].delta.content or "" for c in fast if c.choices)
    sse = _slow_stream(api_server.url, secret)
    assert len(sse) > 4_500_000  # more than the kernel buffers on the way (loopback: ~4 MB)
    slow_text, done = _text_of(sse)
    assert done
    assert slow_text == fast_text
    assert len(fast_text) > 90_000
