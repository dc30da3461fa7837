"""Websocket consumers: thin — authenticate, authorise, subscribe, relay.

The wire protocol is documented in docs/protocol.md. Hot frames (deltas and rendered blocks)
are compact JSON arrays; everything else is a JSON object with a "type".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from importlib import import_module
from typing import Any

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.utils import translation
from django.utils.crypto import constant_time_compare
from django.utils.translation.trans_real import parse_accept_lang_header

from conversations import bounded_json, events
from conversations.access import Access, aconversation_access
from conversations.answers import drain
from conversations.errors import answer_error_text
from conversations.models import ACTIVE_STATUSES, Conversation, Message
from conversations.runtime import off_loop
from conversations.sharing import links

log = logging.getLogger(__name__)
SessionStore = import_module(settings.SESSION_ENGINE).SessionStore
# The sockets this process serves, for a drain to close them with "service restart".
_open: weakref.WeakSet[AsyncWebsocketConsumer] = weakref.WeakSet()


async def _close_all_for_restart() -> None:
    consumers = list(_open)
    log.info("draining: closing %d socket(s) for a restart", len(consumers))
    for consumer in consumers:
        try:
            await consumer.close(code=drain.RESTART_CLOSE_CODE)
        except Exception:
            log.warning("could not close a socket for the restart", exc_info=True)


drain.on_drain(_close_all_for_restart)

# Close codes (documented in docs/protocol.md).
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_SLOW = 4408
MAX_FRAME_BYTES = 64 * 1024
ACCESS_RECHECK_SECONDS = 15.0
SESSION_RECHECK_DELAYS = (0.25, 0.5)  # seconds: a session that ended closes within a second
# Unacknowledged bytes: past the soft cap live text is held back (the client resyncs when it
# catches up); past the hard cap the socket is closed. Memory per socket stays bounded (F15).
SOFT_LAG_BYTES = 256 * 1024
HARD_LAG_BYTES = 4 * 1024 * 1024


def reader_language(scope: dict[str, Any]) -> str:
    """The language the socket's page is drawn in: the language cookie, else the browser's
    Accept-Language, else the site's default (what LocaleMiddleware picks for the page)."""
    wanted = []
    cookie = (scope.get("cookies") or {}).get(settings.LANGUAGE_COOKIE_NAME)
    if cookie:
        wanted.append(str(cookie))
    headers = dict(scope.get("headers") or [])
    accept = headers.get(b"accept-language", b"").decode("latin-1")[:500]
    wanted += [code for code, _q in parse_accept_lang_header(accept) if code != "*"]
    for code in wanted:
        try:
            return translation.get_supported_language_variant(code)
        except LookupError:
            continue
    return settings.LANGUAGE_CODE


def in_language(event: dict[str, Any], language: str) -> dict[str, Any]:
    """A final `state` event with its stored error drawn in the reader's language."""
    code = event.get("error_code")
    if not code:
        return event
    with translation.override(language):
        message = answer_error_text(code, event.get("error_message") or "")
    return {**event, "error_message": message}

try:  # daphne's websocket layer raises this when a frame is sent on a closed connection
    from autobahn.exception import Disconnected as _AutobahnDisconnected

    _DISCONNECTED: tuple[type[BaseException], ...] = (_AutobahnDisconnected,)
except ImportError:  # another ASGI server
    _DISCONNECTED = ()


def decode_frame(text_data: str | None) -> dict[str, Any] | None:
    """A client frame as a dict, or None when it is not a JSON object of sane size and depth."""
    if text_data is None or len(text_data) > MAX_FRAME_BYTES:
        return None
    try:
        content = bounded_json.loads(text_data)
    except bounded_json.InvalidJson:
        return None
    return content if isinstance(content, dict) else None


def _dumps(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


class PingConsumer(AsyncWebsocketConsumer):
    """A connectivity check for signed-in users: answers every frame with a pong."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        frame = decode_frame(text_data)
        if frame is None:
            await self.send(_dumps(events.error_frame("bad_frame", "Frames must be JSON objects.")))
            return
        await self.send(_dumps(events.frame("pong", ref=frame.get("ref"))))


class ConversationConsumer(AsyncWebsocketConsumer):
    """Live view of one conversation: /ws/c/<uuid>/."""

    groups: list[str] = []

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes stale database connections before every event: a hop to the one
        # sync thread per frame, per ack and per state (4 % of the app's CPU with 128 answers
        # streaming, issue 16). Every database call here goes through `off_loop`, which
        # closes them around itself, in the threads that made them: the hop closed nothing.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        self.joined: list[str] = []
        if self.user is None or not self.user.is_authenticated or not self.user.is_active:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        session = self.scope.get("session")
        self.session_key = getattr(session, "session_key", None)
        self.access = await aconversation_access(self.user, self.conversation_id)
        if self.access < Access.READ:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.language = reader_language(self.scope)
        self.checked_at = time.monotonic()
        self.sent_bytes = 0
        self.acked_bytes = 0
        self.held: set[int] = set()  # seqs whose live text was held back for a slow client
        for group in (events.conversation_group(self.conversation_id),
                      events.user_group(self.user.pk)):
            await self.channel_layer.group_add(group, self.channel_name)
            self.joined.append(group)
        await self.accept()
        _open.add(self)
        title, active = await _opening(self.conversation_id)
        await self._send(events.hello_frame(str(self.conversation_id),
                                            self.access.name.lower(), active, title))
        for item in active:
            await self._ask_snapshot(item["id"])

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    # --- frames from the browser ------------------------------------------------------------
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        frame = decode_frame(text_data)
        if frame is None:
            await self._send(events.error_frame(
                "bad_frame", "Frames must be JSON objects of at most 64 KB."))
            return
        kind = frame.get("type")
        if kind == "ack":
            await self._on_ack(frame.get("bytes"))
        elif kind == "resync":
            await self._on_resync(frame.get("seq"))
        elif kind == "ping":
            await self._send(events.frame("pong", ref=frame.get("ref")))
        else:
            await self._send(events.error_frame("unknown_type", "Unknown frame type."))

    async def _on_ack(self, value: Any) -> None:
        if isinstance(value, int) and self.acked_bytes <= value <= self.sent_bytes:
            self.acked_bytes = value
        if self.held and self.sent_bytes - self.acked_bytes < SOFT_LAG_BYTES // 2:
            held, self.held = self.held, set()
            for seq in held:
                message_id = await _message_id_for_seq(self.conversation_id, seq)
                if message_id:
                    await self._ask_snapshot(message_id)

    async def _on_resync(self, seq: Any) -> None:
        if not isinstance(seq, int):
            return
        message_id, final = await _message_for_resync(self.conversation_id, seq)
        if message_id is None:
            await self._send(events.error_frame("not_found", "No such message."))
        elif final is not None:
            # It already ended (perhaps before this client even saw it start): no process is
            # writing it any more, so the answer comes from the database.
            await self._send(events.frame_of("state", in_language(final, self._language())))
        else:
            await self._ask_snapshot(message_id)

    async def _ask_snapshot(self, message_id: str) -> None:
        await self.channel_layer.group_send(events.generation_group(message_id),
                                            events.resync(self.channel_name))

    # --- events from the channel layer --------------------------------------------------------
    async def msg_delta(self, event: dict[str, Any]) -> None:
        if await self._may_relay(event["seq"]):
            await self._send(events.delta_frame(event))

    async def msg_blocks(self, event: dict[str, Any]) -> None:
        if await self._may_relay(event["seq"]):
            await self._send(events.blocks_frame(event))

    async def msg_snapshot(self, event: dict[str, Any]) -> None:
        if await self._still_allowed():
            await self._send(events.frame("snapshot", seq=event["seq"], text=event["text"],
                                          upto=event.get("upto", 0), html=event.get("html", "")))

    async def msg_state(self, event: dict[str, Any]) -> None:
        if await self._still_allowed():
            self.held.discard(event["seq"])
            await self._send(events.frame_of("state", in_language(event, self._language())))

    async def msg_new(self, event: dict[str, Any]) -> None:
        if await self._still_allowed():
            await self._send(events.frame_of("new", event))

    async def conv_changed(self, event: dict[str, Any]) -> None:
        if await self._still_allowed():
            await self._send(events.frame_of("conversation", event))

    async def access_revoked(self, event: dict[str, Any]) -> None:
        conversation = event.get("conversation")
        if conversation and conversation != str(self.conversation_id):
            return
        if event.get("reason") == "session":
            await self._check_session()
            return
        if event.get("reason") == "deleted" or not await self._still_allowed(force=True):
            await self._send(events.frame("revoked", reason=event.get("reason", "access")))
            await self.close(code=CLOSE_FORBIDDEN)

    async def _check_session(self) -> bool:
        """Is the session this socket was opened with still signed in? Closes it (4401) when not.

        Checked a moment after the event and once more later: the request that ended a session
        may still be finishing (Django flushes a session after the logout signal, and refreshes
        the current session's hash after saving a new password).
        """
        key = getattr(self, "session_key", None)
        valid = True
        for delay in SESSION_RECHECK_DELAYS:
            await asyncio.sleep(delay)
            valid = await _session_valid(key, self.user.pk)
            if not valid:
                break
        if valid:
            return True
        self.access = Access.NONE
        await self._send(events.frame("revoked", reason="session"))
        await self.close(code=CLOSE_UNAUTHENTICATED)
        return False

    # --- helpers --------------------------------------------------------------------------
    def _language(self) -> str:
        return getattr(self, "language", None) or settings.LANGUAGE_CODE

    async def _may_relay(self, seq: int) -> bool:
        if not await self._still_allowed():
            return False
        lag = self.sent_bytes - self.acked_bytes
        if lag > HARD_LAG_BYTES:
            await self.close(code=CLOSE_TOO_SLOW)
            return False
        if lag > SOFT_LAG_BYTES or seq in self.held:
            self.held.add(seq)
            return False
        return True

    async def _still_allowed(self, force: bool = False) -> bool:
        """Re-check access now and then (T18): a removed member stops receiving."""
        if self.access is Access.NONE:
            return False
        now = time.monotonic()
        if force or now - self.checked_at > ACCESS_RECHECK_SECONDS:
            self.checked_at = now
            user = await _fresh_user(self.user.pk)
            self.access = (Access.NONE if user is None else
                           await aconversation_access(user, self.conversation_id))
            if self.access is Access.NONE:
                await self._send(events.frame("revoked", reason="access"))
                await self.close(code=CLOSE_FORBIDDEN)
                return False
        return True

    async def _send(self, payload: Any) -> None:
        text = _dumps(payload)
        self.sent_bytes += len(text.encode())
        # The browser may have left between the event and this frame. Raising would end this
        # consumer before daphne's disconnect message reaches it, and its group memberships
        # would outlive it (memory, and sends to a dead channel).
        with contextlib.suppress(*_DISCONNECTED):
            await self.send(text_data=text)


@off_loop
def _opening(conversation_id: Any) -> tuple[str, list[dict[str, Any]]]:
    """The title and the answers being written, read after the socket joined its groups.

    Anything published before the join (a title generated while the page was still
    connecting, an answer faster than the POST's reply) is in these rows; anything after it
    arrives as a frame.
    """
    title = Conversation.objects.filter(pk=conversation_id).values_list(
        "title", flat=True).first() or ""
    rows = Message.objects.filter(conversation_id=conversation_id,
                                  status__in=ACTIVE_STATUSES).order_by("seq")
    return title, [{"id": str(m.pk), "seq": m.seq, "status": m.status, "text": m.content}
                   for m in rows]


@off_loop
def _message_for_resync(
        conversation_id: Any, seq: int) -> tuple[str | None, dict[str, Any] | None]:
    """The message's id, and its final `state` frame when it has already ended."""
    message = Message.objects.filter(conversation_id=conversation_id, seq=seq).only(
        "pk", "seq", "role", "status", "content", "finish_reason", "error_code",
        "error_message", "prompt_tokens", "completion_tokens").first()
    if message is None:
        return None, None
    if message.status in ACTIVE_STATUSES or message.role != "assistant":
        return str(message.pk), None
    return str(message.pk), events.final_state_of(message)


@off_loop
def _message_id_for_seq(conversation_id: Any, seq: int) -> str | None:
    pk = Message.objects.filter(conversation_id=conversation_id, seq=seq).values_list(
        "pk", flat=True).first()
    return str(pk) if pk else None


@off_loop
def _session_valid(session_key: str | None, user_id: Any) -> bool:
    """The session exists, belongs to this active user, and was made with their current
    password (Django's session hash: changing the password ends every other session)."""
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    if user is None or not session_key:
        return False
    data = SessionStore(session_key).load()
    if str(data.get(SESSION_KEY)) != str(user_id):
        return False
    stored = data.get(HASH_SESSION_KEY)
    return bool(stored) and constant_time_compare(stored, user.get_session_auth_hash())


@off_loop
def _fresh_user(user_id: Any) -> Any:
    return get_user_model().objects.filter(pk=user_id, is_active=True).first()



class ShareConsumer(ConversationConsumer):
    """A share link's viewers: /ws/s/<token>/. Read-only; closed the moment it is revoked.

    Live links relay the conversation like the owner's page; snapshot links only listen for
    revocation.
    """

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        self.joined = []
        self.token = self.scope["url_route"]["kwargs"]["token"]
        share = await off_loop(links.get_valid_share)(self.token)
        if share is None:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        if not links.share_readable_by(share, self.user):
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.share_live = share.live
        self.language = reader_language(self.scope)
        self.conversation_id = share.conversation_id
        self.access = Access.READ
        self.checked_at = time.monotonic()
        self.sent_bytes = self.acked_bytes = 0
        self.held = set()
        groups = [links.share_group(self.token)]
        if share.live:
            groups.append(events.conversation_group(self.conversation_id))
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
            self.joined.append(group)
        await self.accept()
        title, active = (await _opening(self.conversation_id)) if share.live else ("", [])
        await self._send(events.hello_frame(None, "read", active, title))
        for item in active:
            await self._ask_snapshot(item["id"])

    async def _on_resync(self, seq: Any) -> None:
        if self.share_live:
            await super()._on_resync(seq)

    async def access_revoked(self, event: dict[str, Any]) -> None:
        if event.get("reason") in {"revoked", "deleted"} or not await self._still_allowed(
                force=True):
            await self._send(events.frame("revoked", reason=event.get("reason", "revoked")))
            await self.close(code=CLOSE_FORBIDDEN)

    async def _still_allowed(self, force: bool = False) -> bool:
        now = time.monotonic()
        if force or now - self.checked_at > ACCESS_RECHECK_SECONDS:
            self.checked_at = now
            share = await off_loop(links.get_valid_share)(self.token)
            if share is None:
                await self._send(events.frame("revoked", reason="revoked"))
                await self.close(code=CLOSE_FORBIDDEN)
                return False
        return True
