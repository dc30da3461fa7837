"""The embedded channel layer: upstream behaviour, with expiry checked at most once a second."""

from __future__ import annotations

import asyncio

import pytest

from chatsite.layers import RateLimitedCleanupLayer

pytestmark = pytest.mark.asyncio


async def test_it_delivers_group_messages_like_the_in_memory_layer() -> None:
    layer = RateLimitedCleanupLayer()
    channel = await layer.new_channel()
    await layer.group_add("conv", channel)
    await layer.group_send("conv", {"type": "msg.delta", "text": "hi"})
    assert await layer.receive(channel) == {"type": "msg.delta", "text": "hi"}


async def test_it_still_drops_expired_messages_but_not_on_every_frame() -> None:
    layer = RateLimitedCleanupLayer(expiry=0.05)
    layer.CLEAN_INTERVAL = 0.2
    await layer.group_send("nobody", {"type": "tick"})  # cleans (nothing to clean yet)
    await layer.send("stale.one", {"type": "old"})
    await asyncio.sleep(0.1)
    await layer.group_send("nobody", {"type": "tick"})  # expired, but cleaned < 0.2 s ago
    assert "stale.one" in layer.channels
    await asyncio.sleep(0.25)
    await layer.group_send("nobody", {"type": "tick"})
    assert "stale.one" not in layer.channels
