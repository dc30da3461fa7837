"""A streamed answer's chunks go to the socket at once (chatsite/daphne_tuning.py, `write_at_once`
on twisted's `writeSequence`), and what the kernel does not take is queued the usual way: a long
answer read slowly through a small receive buffer arrives whole and in order, the same text a
fast reader gets."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.api.conftest import ApiServer, openai_client
from tests.support import slow_http

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = "Tell me everything [[emu:tokens n=25000]]"


def _slow_stream(url: str, secret: str) -> bytes:
    """POST a streamed completion through a small receive buffer, read nothing for a second
    (the server's socket buffer fills within its first writes and the rest of the answer
    waits in twisted's queue), then read slowly (tests.support.slow_http)."""
    parts = urlsplit(url)
    body = json.dumps({"model": "llama-3.2-3b", "stream": True, "max_tokens": 30000,
                       "messages": [{"role": "user", "content": PROMPT}]}).encode()
    head, sse = slow_http(
        parts.hostname or "", parts.port or 80,
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body,
        wait_first=1.0, pause_every=16)
    assert head.startswith(b"HTTP/1.1 200"), head[:300]
    assert b"transfer-encoding: chunked" in head.lower()
    return sse


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
