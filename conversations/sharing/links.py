"""Share links: read-only views of a conversation, revocable at once (threat T08)."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from conversations import audit, events
from conversations.errors import ServiceError
from conversations.models import Conversation, ShareLink


def share_group(token: str) -> str:
    """Channel-layer group of a link's viewers (a hash: group names must stay short and the
    token itself never appears in the channel layer)."""
    return "share." + hashlib.sha256(token.encode()).hexdigest()[:40]


def create_share(user: Any, conversation: Conversation, *, live: bool = False,
                 expires_in_days: int | None = None, anonymous: bool = False) -> ShareLink:
    if anonymous and not settings.ALLOW_ANONYMOUS_SHARES:
        raise ServiceError("anonymous_off", _("Links readable without signing in are turned "
                                              "off on this site."))
    if expires_in_days is not None and not 1 <= expires_in_days <= 365:
        raise ServiceError("bad_expiry", _("Expiry must be between 1 and 365 days."))
    expires = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
    return ShareLink.objects.create(
        conversation=conversation, created_by=user, live=live, anonymous=anonymous,
        expires_at=expires, upto_seq=max(conversation.next_seq - 1, 0))


def revoke_share(share: ShareLink, actor: Any = None) -> bool:
    """Revoke now; viewers with the page open lose it at once. False if already revoked."""
    updated = ShareLink.objects.filter(pk=share.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now())
    if updated:
        share.refresh_from_db()
        audit.record_share_revoked(share, actor=actor)
        token = share.token
        transaction.on_commit(lambda: events.publish_sync(
            share_group(token), events.revoked("revoked")))
    return bool(updated)


def get_valid_share(token: str) -> ShareLink | None:
    share = (ShareLink.objects.select_related("conversation", "conversation__model")
             .filter(token=token).first())
    if share is None or not share.is_valid():
        return None
    return share


def share_readable_by(share: ShareLink, user: Any) -> bool:
    if share.anonymous and settings.ALLOW_ANONYMOUS_SHARES:
        return True
    return bool(user is not None and user.is_authenticated and user.is_active)


def shares_of(conversation: Conversation) -> list[ShareLink]:
    """A conversation's links, newest first (its settings page lists them)."""
    return list(conversation.share_links.order_by("-created_at"))
