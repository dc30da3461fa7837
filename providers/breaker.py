"""A circuit breaker per provider kind, shared by every process through Django's cache.

A provider that fails before its first token `FALLBACK_BREAKER_FAILURES` times (3) within
`FALLBACK_BREAKER_WINDOW` seconds (60) is "open" for `FALLBACK_BREAKER_COOLDOWN` seconds (60):
an answer whose model has a fallback skips it and goes straight to the next model. When the
cool-down is over the provider is tried again; one answer that gets its first token closes the
breaker. With Redis the cache is shared by all server and worker processes; the embedded
default (a local-memory cache) keeps it per process.

Only the counts and the error kind are kept (never a message, a key or a URL). The settings are
read with defaults, so a test may override them; there is no environment variable for them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache

_PREFIX = "breaker:v1:"


def _failures_key(kind: str) -> str:
    return f"{_PREFIX}{kind}:failures"


def _open_key(kind: str) -> str:
    return f"{_PREFIX}{kind}:open"


def _limits() -> tuple[int, float, float]:
    return (max(1, int(getattr(settings, "FALLBACK_BREAKER_FAILURES", 3))),
            max(1.0, float(getattr(settings, "FALLBACK_BREAKER_WINDOW", 60))),
            max(1.0, float(getattr(settings, "FALLBACK_BREAKER_COOLDOWN", 60))))


@dataclass(frozen=True)
class State:
    """What an admin page shows of one provider's breaker."""

    kind: str
    open: bool
    failures: int  # failures counted in the current window
    until: float | None  # the end of the cool-down (epoch seconds) while open
    last_error: str  # the error kind of the failure that opened it

    @property
    def seconds_left(self) -> int:
        return max(0, round((self.until or 0) - time.time())) if self.open else 0


def state(kind: str) -> State:
    """The breaker of the provider of this kind, as every process sees it (one read: every
    Send asks, and with Redis each read is a round trip)."""
    found = cache.get_many([_open_key(kind), _failures_key(kind)])
    opened: Any = found.get(_open_key(kind))
    failures = found.get(_failures_key(kind)) or 0
    if isinstance(opened, dict) and float(opened.get("until", 0)) > time.time():
        return State(kind, True, int(failures), float(opened["until"]),
                     str(opened.get("error", "")))
    return State(kind, False, int(failures), None, "")


def is_open(kind: str) -> bool:
    return state(kind).open


def record_failure(kind: str, error_kind: str) -> bool:
    """Count a failure before the first token; True when this one opened the breaker."""
    threshold, window, cooldown = _limits()
    key = _failures_key(kind)
    cache.add(key, 0, timeout=window)  # the window starts at the first failure
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=window)
        count = 1
    if count < threshold:
        return False
    cache.set(_open_key(kind), {"until": time.time() + cooldown, "error": error_kind[:40]},
              timeout=cooldown)
    cache.delete(key)
    return True


def record_success(kind: str) -> None:
    """An answer got its first token: the provider works again."""
    cache.delete_many([_failures_key(kind), _open_key(kind)])


def reset(kind: str) -> None:
    """Forget everything (an admin fixed the account)."""
    record_success(kind)


# The answer core runs on the event loop: these run the cache calls (Redis) off it.
astate = sync_to_async(state, thread_sensitive=False)
arecord_failure = sync_to_async(record_failure, thread_sensitive=False)
arecord_success = sync_to_async(record_success, thread_sensitive=False)
