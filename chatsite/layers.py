"""The embedded channel layer: Channels' in-memory layer with its housekeeping rate-limited."""

from __future__ import annotations

import time

from channels.layers import InMemoryChannelLayer


class RateLimitedCleanupLayer(InMemoryChannelLayer):
    """Channels' `InMemoryChannelLayer`, expiring messages at most once a second.

    Upstream walks every channel and every group membership on each `receive` and
    `group_send`: work proportional to the open sockets for every frame relayed, about a tenth
    of the app's CPU at 48 streams (py-spy). Expiry (60 s by default) does not need to be
    checked more than once a second; everything else behaves as upstream.
    """

    CLEAN_INTERVAL = 1.0
    _last_clean = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._last_clean < self.CLEAN_INTERVAL:
            return
        self._last_clean = now
        super()._clean_expired()
