"""Channel-layer event types and group names, defined once.

Groups:
- `conv.<hex>`: every viewer of one conversation (deltas, new messages, status changes).
- `gen.<hex>`: the runner generating one assistant message (stop, resync requests).
- `user.<pk>`: every socket of one user (access changes).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

log = logging.getLogger(__name__)

DELTA = "msg.delta"  # {"seq", "offset", "text"}
BLOCKS = "msg.blocks"  # {"seq", "upto", "html"}: newly completed Markdown blocks, rendered
STATE = "msg.state"  # {"seq", "status", ...}: a message changed state (final ones carry usage)
SNAPSHOT = "msg.snapshot"  # full current text of a streaming message, to one channel
NEW = "msg.new"  # a message pair was added (other tabs and team members insert it)
CONVERSATION = "conv.changed"  # title, model or other metadata changed
REVOKED = "access.revoked"  # close sockets of a user who lost access

STOP = "gen.stop"
RESYNC = "gen.resync"  # {"seq", "reply_to"}


def conversation_group(conversation_id: uuid.UUID | str) -> str:
    return f"conv.{uuid.UUID(str(conversation_id)).hex}"


def generation_group(message_id: uuid.UUID | str) -> str:
    return f"gen.{uuid.UUID(str(message_id)).hex}"


def user_group(user_id: Any) -> str:
    return f"user.{int(user_id)}"


# A lost live frame costs a viewer nothing (the next offset shows the gap and the page asks
# for a snapshot); a lost final state leaves a page showing "writing". Those are retried.
_RETRIED = frozenset({STATE, NEW, REVOKED})
_RETRY_DELAYS = (0.05, 0.2, 0.5)


async def publish(group: str, event: dict[str, Any]) -> None:
    """Send `event` to `group`. Never raises: the channel layer being full or away must not
    fail the answer being written (its text is saved regardless)."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return
    delays = _RETRY_DELAYS if event.get("type") in _RETRIED else ()
    for attempt in range(len(delays) + 1):
        try:
            await layer.group_send(group, event)
            return
        except Exception as exc:  # redis down, pool exhausted, ...
            if attempt == len(delays):
                log.warning("could not publish %s to %s: %s", event.get("type"), group,
                            type(exc).__name__)
                return
            await asyncio.sleep(delays[attempt])


def publish_sync(group: str, event: dict[str, Any]) -> None:
    from asgiref.sync import async_to_sync

    async_to_sync(publish)(group, event)
