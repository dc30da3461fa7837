"""Reads: what a user sees. Query counts stay constant whatever a conversation's length."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from django.core.paginator import Page, Paginator
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


Tree = tuple[dict[uuid.UUID, Any], dict[Any, list[uuid.UUID]], dict[uuid.UUID, int]]


def _tree(conversation: Conversation) -> Tree:
    """(id -> parent id), (parent id -> child ids in creation order) and (id -> seq).

    One light query; the seq comes along so that paging never needs a second one.
    """
    parents: dict[uuid.UUID, Any] = {}
    children: dict[Any, list[uuid.UUID]] = {}
    seqs: dict[uuid.UUID, int] = {}
    rows = Message.objects.filter(conversation=conversation).order_by("seq").values_list(
        "id", "parent_id", "seq")
    for message_id, parent_id, seq in rows:
        parents[message_id] = parent_id
        seqs[message_id] = seq
        children.setdefault(parent_id, []).append(message_id)
    return parents, children, seqs


def active_path_ids(conversation: Conversation, tree: Tree | None = None) -> list[uuid.UUID]:
    parents = (tree or _tree(conversation))[0]
    path: list[uuid.UUID] = []
    node = conversation.active_leaf_id
    while node is not None and node in parents:
        path.append(node)
        node = parents[node]
    path.reverse()
    return path


def thread(conversation: Conversation, *, before_seq: int | None = None,
           upto_seq: int | None = None, limit: int = PAGE_SIZE) -> Thread:
    """The messages of the active branch (the last `limit` before `before_seq`).

    Three queries at any length, paging included: the (id, parent, seq) tree, the page of
    messages (authors and models joined) and its attachments.
    """
    tree = _tree(conversation)
    parents, children, seq_of = tree
    path = active_path_ids(conversation, tree)
    if before_seq is not None or upto_seq is not None:
        low, high = before_seq or 2**31, (upto_seq if upto_seq is not None else 2**31) + 1
        path = [mid for mid in path if seq_of[mid] < min(low, high)]
    window = path[-limit:]
    messages = {m.id: m for m in Message.objects.filter(pk__in=window)
                .select_related("author", "model").prefetch_related("attachments")}
    nodes = [ThreadNode(messages[mid], children.get(parents[mid], [mid])) for mid in window]
    oldest = nodes[0].message.seq if nodes else None
    return Thread(nodes=nodes, has_older=len(path) > len(window), oldest_seq=oldest)


def history_for(assistant: Message) -> list[Message]:
    """The messages a model sees for this answer: the branch up to its user prompt."""
    parents = _tree(assistant.conversation)[0]
    chain: list[uuid.UUID] = []
    node = assistant.parent_id
    while node is not None:
        chain.append(node)
        node = parents.get(node)
    chain.reverse()
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
    children = _tree(conversation)[1]
    node = message_id
    while children.get(node):
        node = children[node][-1]
    return node


def active_messages(conversation: Conversation) -> list[Message]:
    return list(Message.objects.filter(conversation=conversation,
                                       status__in=["queued", "streaming"]).order_by("seq"))
