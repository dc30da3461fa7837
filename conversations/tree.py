"""The message tree: regenerations and edits are siblings; a branch is walked up from its tip.

The lowest room of the chat: selectors page through a branch, the answer core reads the history
a model sees, services find where switching lands. Each walk is one recursive query.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from django.db import connection
from django.db.models import Exists, OuterRef, QuerySet
from django.db.models.expressions import RawSQL

from chatsite.compiled import Compiled
from conversations.models import Attachment, Conversation, Document, Message

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
# The walk's ids, as a subquery with positional parameters (in the order the names appear).
_WALK_IDS_ORDER = re.findall(r"%\((\w+)\)s", _WALK)
_WALK_IDS = re.sub(r"%\(\w+\)s", "%s", _WALK) + "SELECT id FROM path"
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


# The fields of a branch's messages that the answer core reads (conversations/answers/
# history.py); any other field of them would be read again, one statement per message.
_HISTORY_FIELDS = ("id", "role", "content", "context_excluded")


def _branch(conversation: uuid.UUID, start: uuid.UUID) -> QuerySet[Message]:
    """The unbounded walk's messages, oldest first, each with whether images or documents hang
    on it: most branches have neither, and the answer core then reads neither."""
    named = _walk_params(conversation, start, NO_BOUND, NO_BOUND)
    walk = RawSQL(_WALK_IDS, [named[name] for name in _WALK_IDS_ORDER])
    # Only what an answer's request is built from: a branch of 40 messages read whole spent
    # about 1 ms converting columns nobody reads (ids, times, usage) into model fields.
    return (Message.objects.filter(id__in=walk).only(*_HISTORY_FIELDS)
            .annotate(has_images=Exists(Attachment.objects.filter(message=OuterRef("pk"))),
                      has_documents=Exists(Document.objects.filter(message=OuterRef("pk"))))
            .order_by("seq"))


# Read before every web answer: compiled once (chatsite/compiled.py).
_BRANCH = Compiled(_branch, conversation=Message._meta.get_field("conversation"),
                   start=Message._meta.get_field("id"))


def history_for(assistant: Message) -> list[Message]:
    """The messages a model sees for this answer: the branch up to its user prompt, oldest
    first, read in one statement (the answer core hands it on instead of walking the branch
    again). Each carries `has_images` and `has_documents` (see `branch_has`)."""
    if assistant.parent_id is None:
        return []
    return _BRANCH.objects(conversation=assistant.conversation_id, start=assistant.parent_id)


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
