"""THE permission helpers. Every view, consumer, API endpoint and task fetches through here.

Levels are ordered: MANAGE implies CONTINUE implies READ. Anything a user may not read is
reported as "not found" (404), so ids of other people's conversations reveal nothing.
"""

from __future__ import annotations

import enum
import uuid
from typing import Any, TypeVar

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Q, QuerySet
from django.http import Http404

from chatsite.compiled import Compiled
from conversations.models import (
    Attachment,
    Conversation,
    Document,
    Message,
    Preset,
    TeamSettings,
)
from conversations.runtime import off_loop

# An uploaded file that follows its conversation's access: an image or a document.
Upload = TypeVar("Upload", Attachment, Document)

# Who asks: a signed-in user (Django's own user model) or an anonymous visitor.
Viewer = User | AnonymousUser


class Access(enum.IntEnum):
    NONE = 0
    READ = 1
    CONTINUE = 2  # post messages, regenerate, stop
    MANAGE = 3  # rename, move, share, delete, change model and settings


def conversation_access(user: Viewer, conversation: Conversation) -> Access:
    if user is None or not user.is_authenticated or not user.is_active:
        return Access.NONE
    if conversation.owner_id == user.pk:
        return Access.MANAGE
    if conversation.team_id and user.groups.filter(pk=conversation.team_id).exists():
        return Access.CONTINUE if members_can_continue(conversation.team_id) else Access.READ
    if getattr(user, "is_superuser", False):
        return Access.READ  # support and oversight; every such opening is audited
    return Access.NONE


def members_can_continue(team_id: int) -> bool:
    """May a team's members post into its shared conversations (a team setting)?"""
    settings_row = TeamSettings.objects.filter(team_id=team_id).only("members_can_continue").first()
    # No settings row yet: the field's default (members may continue) applies.
    return True if settings_row is None else settings_row.members_can_continue


class TeamRole(enum.IntEnum):
    """What a user is to a team (a Django group). Ordered: ADMIN can do all a MANAGER can."""

    NONE = 0
    MEMBER = 1  # reads the team page
    MANAGER = 2  # manages the team's members, invitations and settings
    ADMIN = 3  # a superuser: manages every team


def team_role(user: Viewer, team: Any) -> TeamRole:
    """THE team permission check of every team page. A manager is always also a member: a
    leftover manager row of someone no longer in the group gives nothing."""
    if user is None or not user.is_authenticated or not user.is_active:
        return TeamRole.NONE
    if getattr(user, "is_superuser", False):
        return TeamRole.ADMIN
    team_id = getattr(team, "pk", team)
    if not user.groups.filter(pk=team_id).exists():
        return TeamRole.NONE
    if TeamSettings.objects.filter(team_id=team_id, managers=user).exists():
        return TeamRole.MANAGER
    return TeamRole.MEMBER


def conversations_visible_to(user: Viewer) -> QuerySet[Conversation]:
    """The conversations a user lists and searches: their own and their teams'.

    (Oversight reads by superusers are one conversation at a time, audited; never listed.)
    """
    return Conversation.objects.filter(Q(owner=user) | Q(team__in=user.groups.all()))


def is_oversight(user: Viewer, conversation: Conversation) -> bool:
    """True when a superuser reads a conversation only because they are a superuser."""
    return bool(getattr(user, "is_superuser", False) and conversation.owner_id != user.pk
                and not (conversation.team_id
                         and user.groups.filter(pk=conversation.team_id).exists()))


def _parse_uuid(value: Any) -> uuid.UUID:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        raise Http404 from None


# Every request to a conversation reads it first: compiled once (chatsite/compiled.py).
_CONVERSATION = Compiled(
    lambda pk: Conversation.objects.select_related("model", "model__provider").filter(pk=pk),
    pk=Conversation._meta.get_field("id"))


def get_conversation_for(user: Viewer, conversation_id: Any, need: Access) -> Conversation:
    """The conversation if `user` has at least `need` on it; Http404 otherwise."""
    conversation = _CONVERSATION.first(pk=_parse_uuid(conversation_id))
    if conversation is None or conversation_access(user, conversation) < need:
        raise Http404
    return conversation


def get_message_for(user: Viewer, conversation: Conversation, message_id: Any) -> Message:
    """A message of a conversation already fetched through get_conversation_for."""
    message = Message.objects.filter(pk=_parse_uuid(message_id),
                                     conversation=conversation).first()
    if message is None:
        raise Http404
    return message


@off_loop
def aget_conversation_for(user: Viewer, conversation_id: Any, need: Access) -> Conversation:
    return get_conversation_for(user, conversation_id, need)


@off_loop
def aconversation_access(user: Viewer, conversation_id: Any) -> Access:
    try:
        conversation = Conversation.objects.get(pk=_parse_uuid(conversation_id))
    except (Conversation.DoesNotExist, Http404):
        return Access.NONE
    return conversation_access(user, conversation)


def get_attachment_for(user: Viewer, attachment_id: Any) -> Attachment:
    """An image for whoever can read the conversation it belongs to, or, before it is sent,
    for its uploader only; Http404 otherwise."""
    return _upload_for(Attachment.objects.all(), user, attachment_id)


def get_document_for(user: Viewer, document_id: Any) -> Document:
    """A document for whoever can read the conversation it belongs to, or, before it is sent,
    for its uploader only; Http404 otherwise (the same rule as get_attachment_for)."""
    return _upload_for(Document.objects.all(), user, document_id)


def _upload_for(uploads: QuerySet[Upload], user: Viewer, upload_id: Any) -> Upload:
    """The one rule for uploads (images and documents): readers of the conversation it was
    sent in, or, before it is sent, its uploader alone; Http404 otherwise."""
    upload = uploads.select_related("conversation").filter(pk=_parse_uuid(upload_id)).first()
    if upload is None:
        raise Http404
    if upload.conversation is None:
        if upload.owner_id != getattr(user, "pk", None):
            raise Http404
    elif conversation_access(user, upload.conversation) < Access.READ:
        raise Http404
    return upload


def unsent_uploads_of(user: Viewer) -> QuerySet[Attachment]:
    """Uploads of this user's that no sent message holds yet (the composer may discard them).

    A queryset, so that "still unsent" is checked by the same statement that deletes."""
    return Attachment.objects.filter(owner_id=getattr(user, "pk", None), message__isnull=True)


# --- presets ----------------------------------------------------------------------------------
def preset_access(user: Viewer, preset: Preset) -> Access:
    """Who may see and use a preset (READ) and who may edit or delete it (MANAGE).

    Personal: its owner. Team: the team's members read, its managers (TeamSettings.managers)
    and superusers manage. Site-wide: everyone signed in reads, superusers manage. Anything
    else is NONE (shown as 404)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return Access.NONE
    superuser = bool(getattr(user, "is_superuser", False))
    if preset.scope == Preset.Scope.PERSONAL:
        return Access.MANAGE if preset.owner_id == user.pk else Access.NONE
    if preset.scope == Preset.Scope.TEAM:
        if preset.team_id and may_publish_preset(user, Preset.Scope.TEAM, preset.team_id):
            return Access.MANAGE
        member = bool(preset.team_id) and user.groups.filter(pk=preset.team_id).exists()
        return Access.READ if member else Access.NONE
    if preset.scope == Preset.Scope.SITE:
        return Access.MANAGE if superuser else Access.READ
    return Access.NONE


def may_publish_preset(user: Viewer, scope: str, team_id: int | None = None) -> bool:
    """Personal presets: anyone signed in. Team: a manager of that team (or a superuser).
    Site-wide: superusers only."""
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    superuser = bool(getattr(user, "is_superuser", False))
    if scope == Preset.Scope.PERSONAL:
        return True
    if scope == Preset.Scope.TEAM:
        if not team_id:
            return False
        return superuser or TeamSettings.objects.filter(team_id=team_id,
                                                        managers=user).exists()
    return scope == Preset.Scope.SITE and superuser


def presets_visible_to(user: Viewer) -> QuerySet[Preset]:
    """The presets a user may see and use: their own, their teams' and the site's."""
    if user is None or not user.is_authenticated or not user.is_active:
        return Preset.objects.none()
    return Preset.objects.filter(
        Q(scope=Preset.Scope.PERSONAL, owner=user)
        | Q(scope=Preset.Scope.TEAM, team__in=user.groups.all())
        | Q(scope=Preset.Scope.SITE)).select_related("model", "team", "owner")


def get_preset_for(user: Viewer, slug: Any, need: Access = Access.READ) -> Preset:
    """The preset if `user` has at least `need` on it; Http404 otherwise (unknown and not
    visible look the same)."""
    preset = (Preset.objects.select_related("model", "model__provider", "team")
              .filter(slug=str(slug)[:80]).first() if isinstance(slug, str) else None)
    if preset is None or preset_access(user, preset) < need:
        raise Http404
    return preset
