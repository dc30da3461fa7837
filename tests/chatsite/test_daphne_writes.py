"""daphne's writes go to the socket at once when nothing is queued (chatsite/daphne_tuning.py):
what the kernel does not take is queued the usual way, so a large response to a slow reader
still arrives whole and in order, and a fast one is unchanged."""

from __future__ import annotations

import hashlib
import io
import random
import secrets
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from django.conf import settings
from PIL import Image

from tests.support import signed_in, slow_http

pytestmark = pytest.mark.django_db(transaction=True)


def _noise_png(side: int) -> bytes:
    """Random pixels: a PNG that does not compress, so re-encoded it stays megabytes."""
    rng = random.Random(7)
    image = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _slow_get(url: str, cookie: str) -> bytes:
    """GET through a small receive buffer, read slowly (tests.support.slow_http)."""
    parts = urlsplit(url)
    head, body = slow_http(parts.hostname or "", parts.port or 80,
                           f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                           f"Cookie: {cookie}\r\nConnection: close\r\n\r\n".encode())
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return body


def test_a_large_response_read_slowly_arrives_whole_and_in_order(
        live_app: Any, owner: Any) -> None:
    session = signed_in(owner).cookies[settings.SESSION_COOKIE_NAME].value
    csrf = secrets.token_hex(16)
    cookie = f"{settings.SESSION_COOKIE_NAME}={session}; csrftoken={csrf}"
    uploaded = httpx.post(f"{live_app.url}/uploads/", files={
        "image": ("noise.png", _noise_png(1200), "image/png")},
        headers={"Cookie": cookie, "X-CSRFToken": csrf, "Accept": "application/json",
                 "Referer": f"{live_app.url}/"}, timeout=60)
    assert uploaded.status_code == 201, uploaded.text[:300]
    url = f"{live_app.url}{uploaded.json()['url']}"
    fast = httpx.get(url, headers={"Cookie": cookie}, timeout=60)
    assert fast.status_code == 200
    assert len(fast.content) > 1_000_000  # far more than the kernel buffers on the way
    slow = _slow_get(url, cookie)
    assert len(slow) == len(fast.content)
    assert hashlib.sha256(slow).digest() == hashlib.sha256(fast.content).digest()
