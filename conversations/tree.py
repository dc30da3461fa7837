"""The message tree: regenerations and edits are siblings; a branch is walked up from its tip.

The lowest room of the chat: selectors page through a branch, the answer core reads the history
a model sees, services find where switching lands. Each walk is one recursive query.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db import connection

from conversations.models import Conversation, Message

# The active branch, walked upwards from a message in the database itself, one row per step;
# `counted` counts the rows below the seq bound so the walk stops once a page is filled: the
# cost follows the page shown, not the conversation's length.
_WALK = """
WITH RECURSIVE path(id, parent_id, seq, counted) AS (
    SELECT id, parent_id, seq, CASE WHEN seq < %(bound)s THEN 1 ELSE 0 END
    FROM conversations_message WHERE id = %(start)s AND conversation_id = %(conversation)s
  UNION ALL
    SELECT m.id, m.parent_id, m.seq,
           p.counted + CASE WHEN m.seq < %(bound)s THEN 1 ELSE 0 END
    FROM conversations_message m JOIN path p ON m.id = p.parent_id
    WHERE p.counted <= %(limit)s
)
"""
_PATH_SQL = _WALK + """
SELECT id, parent_id, seq FROM path WHERE seq < %(bound)s ORDER BY seq DESC LIMIT %(rows)s
"""
# The same walk, unbounded, returning the branch's full rows in the same statement, each with
# whether images or documents hang on it: most branches have neither, and the answer core then
# reads neither (two statements fewer before the vendor call).
_BRANCH_SQL = _WALK + """
SELECT m.*,
       EXISTS (SELECT 1 FROM conversations_attachment a WHERE a.message_id = m.id) AS has_images,
       EXISTS (SELECT 1 FROM conversations_document d WHERE d.message_id = m.id) AS has_documents
FROM conversations_message m WHERE m.id IN (SELECT id FROM path) ORDER BY m.seq
"""
NO_BOUND = 2**31 - 1


def _as_uuid(value: Any) -> uuid.UUID | None:
    return None if value is None else value if isinstance(value, uuid.UUID) else uuid.UUID(value)


def _walk_params(conversation_id: Any, start: Any, bound: int, limit: int) -> dict[str, Any]:
    pk = Message._meta.pk
    assert pk is not None
    return {"bound": bound, "limit": limit,
            "start": pk.get_db_prep_value(start, connection),
            "conversation": pk.get_db_prep_value(conversation_id, connection)}


def path_up(conversation: Conversation, start: uuid.UUID, *, bound: int,
             limit: int | None) -> list[tuple[uuid.UUID, uuid.UUID | None]]:
    """(id, parent id) of the branch ending at `start`, oldest first: the last `limit` (or all)
    of its messages whose seq is below `bound`."""
    rows = NO_BOUND if limit is None else limit
    params = {**_walk_params(conversation.pk, start, bound, rows), "rows": rows + 1}
    with connection.cursor() as cursor:
        cursor.execute(_PATH_SQL, params)
        found = [(_as_uuid(mid), _as_uuid(parent)) for mid, parent, _seq in cursor.fetchall()]
    found.reverse()
    return [(mid, parent) for mid, parent in found if mid is not None]


def path_up_ids(conversation_id: uuid.UUID, start: uuid.UUID
                ) -> list[tuple[uuid.UUID, uuid.UUID | None]]:
    """(id, parent id) of the whole branch ending at `start`, oldest first."""
    conversation = Conversation(pk=conversation_id)
    return path_up(conversation, start, bound=NO_BOUND, limit=None)


def history_for(assistant: Message) -> list[Message]:
    """The messages a model sees for this answer: the branch up to its user prompt, oldest
    first, read once (the answer core hands it on instead of walking the branch again).
    Each carries `has_images` and `has_documents` (see `branch_has`)."""
    if assistant.parent_id is None:
        return []
    params = _walk_params(assistant.conversation_id, assistant.parent_id, NO_BOUND, NO_BOUND)
    return list(Message.objects.raw(_BRANCH_SQL, params))


def branch_has(branch: list[Message], flag: str) -> bool:
    """Whether any message of a branch `history_for` read has images (`flag` "has_images") or
    documents ("has_documents"). A message read otherwise counts as having them."""
    return any(bool(getattr(message, flag, True)) for message in branch)


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
