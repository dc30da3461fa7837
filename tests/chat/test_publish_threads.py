"""Events handed over from sync code go out, in order per caller, even when many request
threads publish at once without a server loop (each then runs its own short loop). A publish
once waited for another thread's publish still in flight and never woke: the CI hang of
2026-12-06, seen on the Redis layer, whose sends suspend."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from channels.layers import get_channel_layer
from django.conf import settings

from conversations import events

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason=(
    "the in-memory layer never suspends mid-send; the Redis layer does (PostgreSQL + Redis run)"))

THREADS = 12
EACH = 15


def test_events_published_from_parallel_threads_all_arrive_in_order_per_thread() -> None:
    layer = get_channel_layer()
    group = "publish-threads-test"
    barrier = threading.Barrier(THREADS)

    def publish_many(thread: int) -> None:
        barrier.wait()
        for n in range(EACH):
            events.publish_sync(group, {"type": "chat.test", "thread": thread, "n": n})

    async def scenario() -> list[dict[str, Any]]:
        channel = await layer.new_channel()  # read on this loop while the threads publish
        await layer.group_add(group, channel)
        threads = [threading.Thread(target=publish_many, args=(t,), daemon=True)
                   for t in range(THREADS)]
        for thread in threads:
            thread.start()
        received = []
        try:
            for _ in range(THREADS * EACH):
                received.append(await asyncio.wait_for(layer.receive(channel), timeout=20))
        finally:
            await layer.group_discard(group, channel)
        for thread in threads:
            await asyncio.to_thread(thread.join, 20)
        assert not any(thread.is_alive() for thread in threads), "a publish never finished"
        return received

    received = asyncio.run(scenario())
    for thread in range(THREADS):
        assert [e["n"] for e in received if e["thread"] == thread] == list(range(EACH))
