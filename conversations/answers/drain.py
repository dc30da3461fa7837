"""Graceful drain: answers survive a deploy (F16, F17).

On SIGTERM a server process (or a Celery worker) stops taking new answers, lets the ones it
runs finish for up to DRAIN_SECONDS, then saves whatever is still being written as
`interrupted`, with its text, at once (no waiting for the reaper), and exits. Open sockets are
closed with 4012 ("server restarting"): the page reconnects, to another process when there is
one, and catches up from the database.

- daphne: `install_on_daphne()` (chatsite/asgi.py) runs `drain()` as a Twisted "before
  shutdown" trigger, which Twisted waits for before it stops.
- Celery: `worker_shutting_down` sets the deadline; a running answer task watches it
  (answers/tasks.py). Warm shutdown waits for the task, which is acknowledged only after its
  answer is final (acks_late); a redelivered task finds nothing to claim.
- New answers while draining are refused with 503 and Retry-After (`check_not_draining`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable

from django.conf import settings
from django.core.cache import cache
from django.utils.translation import gettext as _
from twisted.internet import defer

from conversations.answers import runner
from conversations.errors import ServiceError

log = logging.getLogger(__name__)

# "Server restarting": reconnect. (RFC 6455's 1012 means the same, but a server application may
# only send 1000 or 3000-4999: autobahn refuses the rest.)
RESTART_CLOSE_CODE = 4012
SAVE_SECONDS = 10.0  # after the drain time: how long the interrupted answers may take to save

_draining = threading.Event()
_deadline: float | None = None  # time.monotonic() when the drain time is over
# Process-local hooks run when a drain starts (the websocket consumers close their sockets).
_hooks: list[Callable[[], Awaitable[None]]] = []


def draining() -> bool:
    return _draining.is_set()


def deadline_passed() -> bool:
    return _deadline is not None and time.monotonic() >= _deadline


def drain_seconds() -> float:
    return float(getattr(settings, "DRAIN_SECONDS", 60))


def begin(seconds: float | None = None) -> None:
    """Stop taking new answers; the drain time starts now."""
    global _deadline
    if not _draining.is_set():
        allowed = drain_seconds() if seconds is None else seconds
        _deadline = time.monotonic() + allowed
        _draining.set()
        log.info("draining: no new answers; %d running get %.0f s to finish",
                 len(runner.running()), allowed)


def on_drain(hook: Callable[[], Awaitable[None]]) -> None:
    _hooks.append(hook)


def check_not_draining() -> None:
    """Refuse a new answer on a process that is shutting down (the proxy may retry elsewhere)."""
    if draining():
        raise ServiceError("server_restarting", _(
            "This server is restarting. Send again in a moment."), 503, retry_after=5)


async def drain(seconds: float | None = None) -> None:
    """Close the sockets, let running answers finish until the deadline, interrupt the rest."""
    begin(seconds)
    for hook in _hooks:
        try:
            await hook()
        except Exception:
            log.warning("a drain hook failed", exc_info=True)
    while runner.running() and not deadline_passed():
        await asyncio.sleep(0.1)
    await interrupt_running()


async def interrupt_running() -> None:
    """Every answer still being written here is saved now as interrupted, with its text."""
    left = runner.running()
    if not left:
        return
    log.info("draining: %d answer(s) saved as interrupted", len(left))
    tasks = [generation.interrupt() for generation in left]
    done = [task for task in tasks if task is not None]
    if done:
        await asyncio.wait(done, timeout=SAVE_SECONDS)


# --- Celery: the main process is told; a prefork child learns it through the cache -------------
def _key(pid: int) -> str:
    return f"drain-deadline:{socket.gethostname()}:{pid}"


def announce_worker_shutdown() -> None:
    """Celery's `worker_shutting_down` (in the worker's main process): start the drain time
    here and tell this machine's pool children, whose answers watch for it."""
    begin()
    cache.set(_key(os.getpid()), time.time() + drain_seconds(),
              timeout=int(drain_seconds()) + 300)


async def worker_deadline_passed() -> bool:
    """Has the drain time of this worker (this process, or the main process of a prefork
    child) run out?"""
    if deadline_passed():
        return True
    for pid in {os.getpid(), os.getppid()}:
        until = await cache.aget(_key(pid))
        if isinstance(until, int | float) and time.time() >= until:
            return True
    return False


def install_on_daphne() -> None:
    """Run `drain()` when daphne's reactor shuts down (SIGTERM), before it stops.

    The reactor is the one daphne installed (asyncio's); importing it here would install
    Twisted's default one in a process that has none, hence sys.modules.
    """
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        return

    def trigger() -> defer.Deferred[None]:
        return defer.Deferred.fromFuture(asyncio.ensure_future(drain()))

    reactor.addSystemEventTrigger("before", "shutdown", trigger)
