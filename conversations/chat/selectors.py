"""Reads: what a user sees. Query counts stay constant whatever a conversation's length."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from django.core.paginator import Page, Paginator
from django.db import connection
from django.db.models import Q, QuerySet

from conversations.models import Conversation, Message

PAGE_SIZE = 50
LIST_PAGE_SIZE = 30


def conversation_list_for_user(user: Any, *, query: str = "", archived: bool = False,
                               page: int | str = 1) -> Page:
    """The user's own conversations and their teams', pinned first, newest first."""
    qs: QuerySet[Conversation] = Conversation.objects.filter(
        Q(owner=user) | Q(team__in=user.groups.all()), archived=archived
    ).select_related("team", "model")
    query = query.strip()[:200]
    if query:
        matching_messages = Message.objects.filter(content__icontains=query).values(
            "conversation_id")
        qs = qs.filter(Q(title__icontains=query) | Q(pk__in=matching_messages))
    qs = qs.order_by("-pinned", "-updated_at").distinct()
    return Paginator(qs, LIST_PAGE_SIZE).get_page(page)


@dataclass
class ThreadNode:
    message: Message
    sibling_ids: list[uuid.UUID] = field(default_factory=list)

    @property
    def sibling_index(self) -> int:
        return self.sibling_ids.index(self.message.id) + 1

    @property
    def sibling_count(self) -> int:
        return len(self.sibling_ids)

    @property
    def previous_sibling(self) -> uuid.UUID | None:
        i = self.sibling_ids.index(self.message.id)
        return self.sibling_ids[i - 1] if i > 0 else None

    @property
    def next_sibling(self) -> uuid.UUID | None:
        i = self.sibling_ids.index(self.message.id)
        return self.sibling_ids[i + 1] if i + 1 < len(self.sibling_ids) else None


@dataclass
class Thread:
    nodes: list[ThreadNode]
    has_older: bool
    oldest_seq: int | None


# The active branch, walked upwards from a message in the database itself, one row per step;
# `counted` counts the rows below the seq bound so the walk stops once a page is filled: the
# cost follows the page shown, not the conversation's length.
_PATH_SQL = """
WITH RECURSIVE path(id, parent_id, seq, counted) AS (
    SELECT id, parent_id, seq, CASE WHEN seq < %(bound)s THEN 1 ELSE 0 END
    FROM conversations_message WHERE id = %(start)s AND conversation_id = %(conversation)s
  UNION ALL
    SELECT m.id, m.parent_id, m.seq,
           p.counted + CASE WHEN m.seq < %(bound)s THEN 1 ELSE 0 END
    FROM conversations_message m JOIN path p ON m.id = p.parent_id
    WHERE p.counted <= %(limit)s
)
SELECT id, parent_id, seq FROM path WHERE seq < %(bound)s ORDER BY seq DESC LIMIT %(rows)s
"""
_NO_BOUND = 2**31 - 1


def _as_uuid(value: Any) -> uuid.UUID | None:
    return None if value is None else value if isinstance(value, uuid.UUID) else uuid.UUID(value)


def _path_up(conversation: Conversation, start: uuid.UUID, *, bound: int,
             limit: int | None) -> list[tuple[uuid.UUID, uuid.UUID | None]]:
    """(id, parent id) of the branch ending at `start`, oldest first: the last `limit` (or all)
    of its messages whose seq is below `bound`."""
    pk = Message._meta.pk
    assert pk is not None
    rows = _NO_BOUND if limit is None else limit
    params = {"bound": bound, "start": pk.get_db_prep_value(start, connection),
              "conversation": pk.get_db_prep_value(conversation.pk, connection),
              "limit": rows, "rows": rows + 1}
    with connection.cursor() as cursor:
        cursor.execute(_PATH_SQL, params)
        found = [(_as_uuid(mid), _as_uuid(parent)) for mid, parent, _seq in cursor.fetchall()]
    found.reverse()
    return [(mid, parent) for mid, parent in found if mid is not None]


def _siblings(conversation: Conversation, parent_ids: set[uuid.UUID | None]
              ) -> dict[uuid.UUID | None, list[uuid.UUID]]:
    """parent id -> its children in creation order (attempts and edits), for these parents."""
    condition = Q(parent_id__in=[p for p in parent_ids if p is not None])
    if None in parent_ids:
        condition |= Q(parent__isnull=True)
    children: dict[uuid.UUID | None, list[uuid.UUID]] = {}
    for message_id, parent_id in (Message.objects.filter(condition, conversation=conversation)
                                  .order_by("seq").values_list("id", "parent_id")):
        children.setdefault(parent_id, []).append(message_id)
    return children


def thread(conversation: Conversation, *, before_seq: int | None = None,
           upto_seq: int | None = None, limit: int = PAGE_SIZE) -> Thread:
    """The messages of the active branch (the last `limit` before `before_seq`).

    Four queries at any length, paging included: the branch walked up from the active leaf
    (stopping once the page is full), the siblings of the messages shown, the messages
    (authors and models joined) and their attachments.
    """
    if conversation.active_leaf_id is None:
        return Thread(nodes=[], has_older=False, oldest_seq=None)
    bound = min(before_seq if before_seq is not None else _NO_BOUND,
                upto_seq + 1 if upto_seq is not None else _NO_BOUND)
    path = _path_up(conversation, conversation.active_leaf_id, bound=bound, limit=limit)
    has_older = len(path) > limit
    window = path[-limit:] if limit else []
    children = _siblings(conversation, {parent for _mid, parent in window})
    messages = {m.id: m for m in Message.objects.filter(pk__in=[mid for mid, _p in window])
                .select_related("author", "model").prefetch_related("attachments")}
    nodes = [ThreadNode(messages[mid], children.get(parent, [mid])) for mid, parent in window]
    oldest = nodes[0].message.seq if nodes else None
    return Thread(nodes=nodes, has_older=has_older, oldest_seq=oldest)


def history_for(assistant: Message) -> list[Message]:
    """The messages a model sees for this answer: the branch up to its user prompt."""
    if assistant.parent_id is None:
        return []
    chain = [mid for mid, _parent in _path_up(assistant.conversation, assistant.parent_id,
                                               bound=_NO_BOUND, limit=None)]
    by_id = {m.id: m for m in Message.objects.filter(pk__in=chain)}
    return [by_id[mid] for mid in chain]


def node_for(message: Message) -> ThreadNode:
    """One message with its siblings (attempts or edits under the same parent)."""
    siblings = list(Message.objects.filter(conversation_id=message.conversation_id,
                                           parent_id=message.parent_id)
                    .order_by("seq").values_list("pk", flat=True))
    return ThreadNode(message, siblings)


def latest_leaf_under(conversation: Conversation, message_id: uuid.UUID) -> uuid.UUID:
    """Follow the newest child down from a message: where switching to it should land."""
    children: dict[Any, list[uuid.UUID]] = {}
    for child_id, parent_id in (Message.objects.filter(conversation=conversation)
                                .order_by("seq").values_list("id", "parent_id")):
        children.setdefault(parent_id, []).append(child_id)
    node = message_id
    while children.get(node):
        node = children[node][-1]
    return node


def active_messages(conversation: Conversation) -> list[Message]:
    return list(Message.objects.filter(conversation=conversation,
                                       status__in=["queued", "streaming"]).order_by("seq"))
