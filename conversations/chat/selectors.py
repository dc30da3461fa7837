"""Reads: what a user sees. Query counts stay constant whatever a conversation's length."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from django.core.paginator import Page, Paginator
from django.db.models import Q, QuerySet

from conversations.access import conversations_visible_to
from conversations.models import Conversation, Message
from conversations.tree import NO_BOUND, path_up

PAGE_SIZE = 50
LIST_PAGE_SIZE = 30


def conversation_list_for_user(user: Any, *, query: str = "", archived: bool = False,
                               page: int | str = 1) -> Page:
    """The user's own conversations and their teams', pinned first, newest first."""
    qs: QuerySet[Conversation] = conversations_visible_to(user).filter(
        archived=archived).select_related("team", "model")
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
    bound = min(before_seq if before_seq is not None else NO_BOUND,
                upto_seq + 1 if upto_seq is not None else NO_BOUND)
    path = path_up(conversation, conversation.active_leaf_id, bound=bound, limit=limit)
    has_older = len(path) > limit
    window = path[-limit:] if limit else []
    children = _siblings(conversation, {parent for _mid, parent in window})
    messages = {m.id: m for m in Message.objects.filter(pk__in=[mid for mid, _p in window])
                .select_related("author", "model").prefetch_related("attachments")}
    nodes = [ThreadNode(messages[mid], children.get(parent, [mid])) for mid, parent in window]
    oldest = nodes[0].message.seq if nodes else None
    return Thread(nodes=nodes, has_older=has_older, oldest_seq=oldest)


def node_for(message: Message) -> ThreadNode:
    """One message with its siblings (attempts or edits under the same parent)."""
    siblings = list(Message.objects.filter(conversation_id=message.conversation_id,
                                           parent_id=message.parent_id)
                    .order_by("seq").values_list("pk", flat=True))
    return ThreadNode(message, siblings)


def active_messages(conversation: Conversation) -> list[Message]:
    return list(Message.objects.filter(conversation=conversation,
                                       status__in=["queued", "streaming"]).order_by("seq"))
