"""Channel-layer events, websocket frames and group names: every shape is built here, once.

Groups:
- `conv.<hex>`: every viewer of one conversation (deltas, new messages, status changes).
- `gen.<hex>`: the runner generating one assistant message (stop, resync requests).
- `user.<pk>`: every socket of one user (access changes).
- `share.<hash>`: the viewers of one share link (sharing/links.py names it).

Events travel between processes through the channel layer (dicts with a `type` that names the
consumer's handler). Frames are what a consumer writes to the browser (docs/protocol.md): the
hot ones (deltas, rendered blocks) are compact JSON arrays, every other one an object with a
`type`. Offsets and lengths on the wire are UTF-16 code units, what a JavaScript string's
`length` counts (`u16_len`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from channels.layers import get_channel_layer

from conversations import runtime

log = logging.getLogger(__name__)

DELTA = "msg.delta"  # {"seq", "offset", "text"}
BLOCKS = "msg.blocks"  # {"seq", "upto", "html"}: newly completed Markdown blocks, rendered
STATE = "msg.state"  # {"seq", "id", "status", ...}: a message changed state (final: usage too)
SNAPSHOT = "msg.snapshot"  # full current text of a streaming message, to one channel
NEW = "msg.new"  # a message pair was added (other tabs and team members insert it)
CONVERSATION = "conv.changed"  # title, model or other metadata changed
REVOKED = "access.revoked"  # close sockets of a user who lost access

STOP = "gen.stop"
RESYNC = "gen.resync"  # {"reply_to"}

Event = dict[str, Any]


def u16_len(text: str) -> int:
    """Length in UTF-16 code units: characters beyond the BMP (emoji) count twice."""
    if text.isascii():  # most pieces: no walk over the characters at all
        return len(text)
    # "surrogatepass": a lone surrogate (never valid, but a str may hold one) is one unit.
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


# --- groups -------------------------------------------------------------------------------------
def conversation_group(conversation_id: uuid.UUID | str) -> str:
    return f"conv.{uuid.UUID(str(conversation_id)).hex}"


def generation_group(message_id: uuid.UUID | str) -> str:
    return f"gen.{uuid.UUID(str(message_id)).hex}"


def user_group(user_id: Any) -> str:
    return f"user.{int(user_id)}"


# --- events (channel layer) ---------------------------------------------------------------------
def delta(seq: int, offset: int, text: str) -> Event:
    return {"type": DELTA, "seq": seq, "offset": offset, "text": text}


def blocks(seq: int, upto: int, html: str) -> Event:
    return {"type": BLOCKS, "seq": seq, "upto": upto, "html": html}


def snapshot(seq: int, text: str, upto: int, html: str) -> Event:
    return {"type": SNAPSHOT, "seq": seq, "text": text, "upto": upto, "html": html}


def state(seq: int, message_id: uuid.UUID | str, status: str, **extra: Any) -> Event:
    """A state change; `streaming` carries nothing more, final states use `final_state`."""
    return {"type": STATE, "seq": seq, "id": str(message_id), "status": status, **extra}


def final_state(seq: int, message_id: uuid.UUID | str, status: str, *, text: str,
                finish_reason: str = "", error_code: str = "", error_message: str = "",
                prompt_tokens: int | None = None,
                completion_tokens: int | None = None) -> Event:
    """The last state of an answer: what a page needs to settle it without a reload."""
    return state(seq, message_id, status, length=u16_len(text), finish_reason=finish_reason,
                 error_code=error_code, error_message=error_message,
                 usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens})


def final_state_of(message: Any) -> Event:
    """`final_state` of a stored assistant message (a conversations.models.Message)."""
    return final_state(message.seq, message.pk, message.status, text=message.content,
                       finish_reason=message.finish_reason, error_code=message.error_code,
                       error_message=message.error_message,
                       prompt_tokens=message.prompt_tokens,
                       completion_tokens=message.completion_tokens)


def new_pair(assistant_seq: int, assistant_id: uuid.UUID | str, user_seq: int | None = None,
             user_id: uuid.UUID | str | None = None) -> Event:
    event: Event = {"type": NEW, "assistant_seq": assistant_seq,
                    "assistant_id": str(assistant_id)}
    if user_seq is not None and user_id is not None:
        event.update({"user_seq": user_seq, "user_id": str(user_id)})
    return event


def conversation_changed(title: str, *, auto: bool = False) -> Event:
    """The title changed: renamed by someone (`auto` False) or generated after the first
    answer (`auto` True); open pages update their header and sidebar."""
    return {"type": CONVERSATION, "title": title, "auto": auto}


def revoked(reason: str, conversation: uuid.UUID | str | None = None) -> Event:
    event: Event = {"type": REVOKED, "reason": reason}
    if conversation is not None:
        event["conversation"] = str(conversation)
    return event


def stop() -> Event:
    return {"type": STOP}


def resync(reply_to: str) -> Event:
    return {"type": RESYNC, "reply_to": reply_to}


# --- frames (websocket, to the browser) ---------------------------------------------------------
def delta_frame(event: Event) -> list[Any]:
    return ["d", event["seq"], event["offset"], event["text"]]


def blocks_frame(event: Event) -> list[Any]:
    return ["b", event["seq"], event["upto"], event["html"]]


def frame(kind: str, **fields: Any) -> Event:
    """An object frame: {"type": kind, ...}."""
    return {"type": kind, **fields}


def frame_of(kind: str, event: Event) -> Event:
    """An event relayed as an object frame: its fields under the frame's own type."""
    return {"type": kind, **{k: v for k, v in event.items() if k != "type"}}


def error_frame(code: str, message: str) -> Event:
    return frame("error", code=code, message=message)


def hello_frame(conversation: str | None, access: str, active: list[Event],
                title: str = "") -> Event:
    """The first frame. `title` is the stored title ("" for none yet), so a page that connected
    after a title was generated, or reconnected, shows it without a reload."""
    return frame("hello", conversation=conversation, access=access, active=active, title=title)


# --- publishing ---------------------------------------------------------------------------------
# A lost live frame costs a viewer nothing (the next offset shows the gap and the page asks
# for a snapshot); a lost final state leaves a page showing "writing", a lost title an old one.
# Those are retried.
_RETRIED = frozenset({STATE, NEW, REVOKED, CONVERSATION})
_RETRY_DELAYS = (0.05, 0.2, 0.5)


async def publish(group: str, event: Event) -> None:
    """Send `event` to `group`. Never raises: the channel layer being full or away must not
    fail the answer being written (its text is saved regardless)."""
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


def publish_sync(group: str, event: Event) -> None:
    """`publish` from sync code. In the server process the event is handed to the server loop
    and the caller goes on: a request thread used to wait for the loop to take it, and under
    load (64 messages posted within a second while 64 answers stream) that wait was a large part
    of each POST's time (issue 16). Events handed over go out in the order they were handed
    over. Elsewhere (a worker, a command, tests without a server) it runs to completion here."""
    runtime.submit(_publish_in_order, group, event)


_tail: asyncio.Task[Any] | None = None  # the last event handed over to the server loop


async def _publish_in_order(group: str, event: Event) -> None:
    global _tail
    if asyncio.get_running_loop() is not runtime.server_loop():
        # A short loop of its own (async_to_sync, no server): the caller waits for this very
        # publish, so its order is the caller's. Waiting for a task of another loop would never
        # wake (the CI hang of 2026-12-06).
        await publish(group, event)
        return
    # Handed-over tasks take their first step in the order they were submitted, so each takes
    # its place behind the one before and waits for it: the layer may suspend mid-send.
    previous, _tail = _tail, asyncio.current_task()
    if previous is not None and not previous.done():
        await asyncio.wait({previous})
    await publish(group, event)
