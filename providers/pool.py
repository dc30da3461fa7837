"""Warm vendor connections: one long-lived `httpx.AsyncClient` per provider configuration per
server event loop.

Building a client per answer cost a TCP (and, to a real vendor, TLS) handshake in front of every
first token: tens to hundreds of milliseconds to Alibaba or Baidu over the internet. A client
kept for the life of the server's loop keeps its connections alive between answers (HTTP/1.1
keep-alive), and a Qianfan token fetch rides the same pool.

httpx clients belong to the event loop that opened their connections, so the pool is per loop,
and only loops that live as long as the process are pooled: the ASGI server's loop, once
`conversations.runtime.capture` takes it on the first request, and a Celery worker child's
persistent loop (`conversations/answers/tasks.py`) each call `keep_warm()`. Short-lived loops
(`asyncio.run`, `async_to_sync`) get a private client that their caller closes, as before: a
pooled client there would outlive its loop.

A client is replaced when its configuration changes (base URL, keys, timeouts): the fingerprint
is a hash, so the pool holds no key in clear beyond what the client itself sends.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import weakref
from dataclasses import dataclass

import httpx

from providers.base import ProviderConfig
from providers.retry import make_http_client

# Idle connections are closed after this many seconds. Below the 15-60 s idle timeouts common
# in front of the vendors, so the client, not the server, usually ends an idle connection.
KEEPALIVE_EXPIRY = 10.0
MAX_KEEPALIVE = 64  # idle connections kept per provider; more streams still open more
POOL_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=MAX_KEEPALIVE,
                           keepalive_expiry=KEEPALIVE_EXPIRY)


@dataclass
class _Entry:
    fingerprint: str
    client: httpx.AsyncClient


_warm_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], _Entry]] = (
    weakref.WeakKeyDictionary())


def keep_warm(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Pool vendor clients in `loop` (the running one by default) from now on; call it only for
    a loop that lives as long as the process."""
    _warm_loops.add(loop or asyncio.get_running_loop())


def _running_warm_loop() -> asyncio.AbstractEventLoop | None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop if loop in _warm_loops else None


def fingerprint(config: ProviderConfig) -> str:
    """What makes two configurations need different clients (a digest: no key in clear)."""
    material = json.dumps([config.kind, config.base_url, sorted(config.credentials.items()),
                           config.connect_timeout, config.read_timeout], sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


def http_client(config: ProviderConfig) -> tuple[httpx.AsyncClient, bool]:
    """(client, shared). A shared client must not be closed by its user; a private one must."""
    loop = _running_warm_loop()
    if loop is None:
        return make_http_client(config), False
    pool = _pools.setdefault(loop, {})
    slot = (config.kind, config.base_url)
    wanted = fingerprint(config)
    entry = pool.get(slot)
    if entry is None or entry.fingerprint != wanted:
        # A replaced client is left to the answers still streaming through it; it is
        # collected (and its sockets closed) when the last of them lets go.
        entry = _Entry(wanted, make_http_client(config, limits=POOL_LIMITS))
        pool[slot] = entry
    return entry.client, True


async def aclose_all() -> None:
    """Close this loop's pooled clients (a worker's loop before it ends; tests)."""
    loop = asyncio.get_running_loop()
    for entry in _pools.pop(loop, {}).values():
        await entry.client.aclose()


def pooled_clients() -> int:
    """How many clients this loop holds (tests)."""
    loop = _running_warm_loop()
    return len(_pools.get(loop, {})) if loop is not None else 0


__all__ = ["KEEPALIVE_EXPIRY", "aclose_all", "fingerprint", "http_client", "keep_warm",
           "pooled_clients"]
