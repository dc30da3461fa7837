"""THE permission helpers. Every view, consumer, API endpoint and task fetches through here.

Levels are ordered: MANAGE implies CONTINUE implies READ. Anything a user may not read is
reported as "not found" (404), so ids of other people's conversations reveal nothing.
"""

from __future__ import annotations

import enum
import uuid
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import Http404

from conversations.models import Conversation, Message
from conversations.runtime import off_loop

User = AbstractBaseUser | AnonymousUser


class Access(enum.IntEnum):
    NONE = 0
    READ = 1
    CONTINUE = 2  # post messages, regenerate, stop
    MANAGE = 3  # rename, move, share, delete, change model and settings


def conversation_access(user: User | Any, conversation: Conversation) -> Access:
    if user is None or not user.is_authenticated or not user.is_active:
        return Access.NONE
    if conversation.owner_id == user.pk:
        return Access.MANAGE
    if conversation.team_id and user.groups.filter(pk=conversation.team_id).exists():
        from conversations.sharing.teams import members_can_continue

        return Access.CONTINUE if members_can_continue(conversation.team_id) else Access.READ
    if getattr(user, "is_superuser", False):
        return Access.READ  # support and oversight; every such opening is audited
    return Access.NONE


def is_oversight(user: User | Any, conversation: Conversation) -> bool:
    """True when a superuser reads a conversation only because they are a superuser."""
    return bool(getattr(user, "is_superuser", False) and conversation.owner_id != user.pk
                and not (conversation.team_id
                         and user.groups.filter(pk=conversation.team_id).exists()))


def _parse_uuid(value: Any) -> uuid.UUID:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        raise Http404 from None


def get_conversation_for(user: User | Any, conversation_id: Any, need: Access) -> Conversation:
    """The conversation if `user` has at least `need` on it; Http404 otherwise."""
    pk = _parse_uuid(conversation_id)
    conversation = (Conversation.objects.select_related("model", "model__provider")
                    .filter(pk=pk).first())
    if conversation is None or conversation_access(user, conversation) < need:
        raise Http404
    return conversation


def get_message_for(user: User | Any, conversation: Conversation, message_id: Any) -> Message:
    """A message of a conversation already fetched through get_conversation_for."""
    message = Message.objects.filter(pk=_parse_uuid(message_id),
                                     conversation=conversation).first()
    if message is None:
        raise Http404
    return message


@off_loop
def aget_conversation_for(user: User | Any, conversation_id: Any, need: Access) -> Conversation:
    return get_conversation_for(user, conversation_id, need)


@off_loop
def aconversation_access(user: User | Any, conversation_id: Any) -> Access:
    try:
        conversation = Conversation.objects.get(pk=_parse_uuid(conversation_id))
    except (Conversation.DoesNotExist, Http404):
        return Access.NONE
    return conversation_access(user, conversation)
