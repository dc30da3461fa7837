"""Channel-layer event types and group names, defined once.

Groups:
- `conv.<hex>`: every viewer of one conversation (deltas, new messages, status changes).
- `gen.<hex>`: the runner generating one assistant message (stop, resync requests).
- `user.<pk>`: every socket of one user (access changes).
"""

from __future__ import annotations

import uuid
from typing import Any

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


async def publish(group: str, event: dict[str, Any]) -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is not None:
        await layer.group_send(group, event)


def publish_sync(group: str, event: dict[str, Any]) -> None:
    from asgiref.sync import async_to_sync

    async_to_sync(publish)(group, event)
