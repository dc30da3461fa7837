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


async def test_a_receiver_never_sees_what_the_sender_changes_afterwards() -> None:
    layer = RateLimitedCleanupLayer()
    flat, nested = await layer.new_channel(), await layer.new_channel()
    delta = {"type": "msg.delta", "seq": 2, "offset": 0, "text": "hi"}
    usage, ids = {"prompt_tokens": 3}, [1]
    state = {"type": "msg.state", "seq": 2, "usage": usage, "ids": ids}
    await layer.send(flat, delta)
    await layer.send(nested, state)
    delta["text"] = "changed"
    usage["prompt_tokens"] = 99
    ids.append(2)
    assert await layer.receive(flat) == {"type": "msg.delta", "seq": 2, "offset": 0,
                                         "text": "hi"}
    assert await layer.receive(nested) == {"type": "msg.state", "seq": 2,
                                           "usage": {"prompt_tokens": 3}, "ids": [1]}


async def test_a_full_channel_is_refused_as_upstream() -> None:
    from channels.exceptions import ChannelFull

    layer = RateLimitedCleanupLayer(capacity=1)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "one"})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "two"})


async def test_a_group_send_reaches_every_member_and_skips_a_full_one() -> None:
    layer = RateLimitedCleanupLayer(capacity=1)
    members = [await layer.new_channel() for _ in range(3)]
    for channel in members:
        await layer.group_add("conv", channel)
    await layer.send(members[1], {"type": "already.there"})  # members[1] is full
    await layer.group_send("conv", {"type": "msg.delta", "text": "hi"})
    assert await layer.receive(members[0]) == {"type": "msg.delta", "text": "hi"}
    assert await layer.receive(members[1]) == {"type": "already.there"}
    assert await layer.receive(members[2]) == {"type": "msg.delta", "text": "hi"}
    await layer.group_send("nobody", {"type": "msg.delta"})  # an empty group is no error


async def test_a_waiting_consumer_keeps_one_queue_and_leaving_drops_it() -> None:
    layer = RateLimitedCleanupLayer()
    channel = await layer.new_channel()
    receiving = asyncio.ensure_future(layer.receive(channel))
    await asyncio.sleep(0)
    queue = layer.channels[channel]
    await layer.send(channel, {"type": "one"})
    assert await receiving == {"type": "one"}
    receiving = asyncio.ensure_future(layer.receive(channel))
    await asyncio.sleep(0)
    assert layer.channels[channel] is queue  # the same queue for the next frame
    receiving.cancel()  # the consumer went away
    with pytest.raises(asyncio.CancelledError):
        await receiving
    assert channel not in layer.channels


async def test_it_still_refuses_bad_channel_and_group_names() -> None:
    layer = RateLimitedCleanupLayer()
    for call in (layer.send("bad name!", {"type": "x"}), layer.receive("bad name"),
                 layer.group_send("bad group", {"type": "x"})):
        with pytest.raises(TypeError):
            await call
    assert layer.channels == {}
