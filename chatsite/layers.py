"""The embedded channel layer: Channels' in-memory layer with its housekeeping rate-limited and
its per-message copy made only as deep as the message."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from copy import deepcopy
from typing import Any, cast

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer

# Values a receiver cannot change in place: a message holding only these is isolated from its
# sender by a shallow copy.
_IMMUTABLE = frozenset({str, int, float, bool, bytes, type(None), uuid.UUID})


def isolated(message: dict[str, Any]) -> dict[str, Any]:
    """A copy of `message` that neither its sender nor a receiver can change for the other:
    shallow when every value is immutable (deltas, rendered blocks, most events), else deep."""
    if all(type(value) in _IMMUTABLE for value in message.values()):
        return dict(message)
    return deepcopy(message)


class RateLimitedCleanupLayer(InMemoryChannelLayer):
    """Channels' `InMemoryChannelLayer`, expiring messages at most once a second.

    Upstream walks every channel and every group membership on each `receive` and
    `group_send`: work proportional to the open sockets for every frame relayed, about a tenth
    of the app's CPU at 48 streams (py-spy). Expiry (60 s by default) does not need to be
    checked more than once a second.

    Upstream also deep-copies every message for every receiver (7 % of the app's CPU at 32
    streams, py-spy), for deltas whose values are all strings and numbers, and `group_send`
    makes a task per member and waits for them through `as_completed` (about 4 %), though a
    send to this layer never waits for anything. `send` copies as deep as the message needs
    (`isolated`), and `group_send` sends to each member in turn; everything else behaves as
    upstream (a full member's channel is skipped, as there).

    Upstream's `receive` also makes a new queue for every message a consumer waits for, and
    every call checks the channel or group name against a regular expression. Here a queue
    lives as long as its consumer receives, and a name is checked when the layer first meets
    it (bench/layer.py has the figures).
    """

    CLEAN_INTERVAL = 1.0
    _last_clean = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._last_clean < self.CLEAN_INTERVAL:
            return
        self._last_clean = now
        super()._clean_expired()

    def _queue(self, channel: str) -> asyncio.Queue[Any]:
        """The channel's queue, made (and its name checked) the first time the layer meets it.
        Upstream builds a queue on every send and receive, to throw most away."""
        queue = self.channels.get(channel)
        if queue is None:
            self.require_valid_channel_name(channel)
            queue = self.channels[channel] = asyncio.Queue(maxsize=self.get_capacity(channel))
        return queue

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        # Upstream's send, with `isolated` for its `deepcopy`, and the name checked only when
        # the channel is new to the layer (a queue exists only for a name that was checked).
        assert isinstance(message, dict), "message is not a dict"
        assert "__asgi_channel__" not in message
        queue = self._queue(channel)
        try:
            queue.put_nowait((time.time() + self.expiry, isolated(message)))
        except asyncio.QueueFull:
            raise ChannelFull(channel) from None

    async def receive(self, channel: str) -> dict[str, Any]:
        # Upstream builds a new queue for every receive and drops it whenever it is empty, so a
        # consumer waiting for its next frame had a fresh queue made for each one. The queue is
        # kept while its consumer keeps receiving, and dropped, as upstream, when a receive
        # ends without a message (the consumer went away) and nothing is waiting in it.
        queue = self._queue(channel)
        self._clean_expired()
        try:
            _expires, message = await queue.get()
        except BaseException:
            if queue.empty() and self.channels.get(channel) is queue:
                del self.channels[channel]
            raise
        return cast(dict[str, Any], message)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "Message is not a dict"
        members = self.groups.get(group)
        if members is None:  # a known group's name was checked when it was joined
            self.require_valid_group_name(group)
        self._clean_expired()
        for channel in list(members or ()):
            with contextlib.suppress(ChannelFull):
                await self.send(channel, message)
