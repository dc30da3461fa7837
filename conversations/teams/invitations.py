"""One-time, expiring invitation links: created by a team's manager or an administrator, shown
once, stored as the SHA-256 of the token (like API tokens), used once by one conditional UPDATE
(two tabs cannot both use a link), revocable, and audited at every step.

Using a link works whatever ALLOW_SIGNUP says: the invitation is the permission.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext as _

from conversations import audit
from conversations.models import Invitation
from conversations.teams import services
from conversations.teams.services import TeamRefused

User = get_user_model()

INVITATION_CREATED = "invitation.created"
INVITATION_USED = "invitation.used"
INVITATION_REVOKED = "invitation.revoked"

DEFAULT_DAYS = 7
MAX_PENDING = 200  # per team: more is a script gone wrong, not a manager at work
MAX_DAYS = 90
TOKEN_BYTES = 32
_TOKEN_MAX_CHARS = 100  # token_urlsafe(32) is 43 characters; anything far longer is no token


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _details(invitation: Invitation) -> dict[str, Any]:
    """What the audit trail says about an invitation: never its token or its hash."""
    return {"team": invitation.team.name if invitation.team else None,
            "team_id": invitation.team_id, "role": invitation.role,
            "bound_to_email": bool(invitation.email),
            "expires_at": invitation.expires_at.isoformat()}


@dataclass(frozen=True)
class CreatedInvitation:
    invitation: Invitation
    token: str  # shown once; only its hash is stored


def create(*, team: Group | None, email: str, role: str, days: int, actor: Any,
           request: HttpRequest | None = None) -> CreatedInvitation:
    if role not in Invitation.Role.values:
        raise TeamRefused(_("Choose the role: member or manager."))
    if not 1 <= days <= MAX_DAYS:
        raise TeamRefused(_("An invitation lasts from 1 to %(n)s days.") % {"n": MAX_DAYS})
    if team is None:
        role = Invitation.Role.MEMBER  # no team: the role means nothing
    if pending_for(team).count() >= MAX_PENDING:
        raise TeamRefused(_("There are %(n)s pending invitations, the most allowed; revoke "
                            "some first.") % {"n": MAX_PENDING})
    token = secrets.token_urlsafe(TOKEN_BYTES)
    invitation = Invitation.objects.create(
        token_hash=hash_token(token), email=(email or "").strip(), team=team, role=role,
        created_by=actor, expires_at=timezone.now() + timedelta(days=days))
    audit.record(INVITATION_CREATED, actor=actor, request=request,
                 target=f"invitation {invitation.pk}", details=_details(invitation))
    return CreatedInvitation(invitation, token)


def pending_for(team: Group | None, now: datetime | None = None) -> QuerySet[Invitation]:
    """A team's links not used, revoked or expired yet; with None, the links to the site
    alone (made by a superuser, into no team)."""
    scope = {"team": team} if team is not None else {"team__isnull": True}
    return (Invitation.objects.filter(**scope, used_at__isnull=True, revoked_at__isnull=True,
                                      expires_at__gt=now or timezone.now())
            .select_related("created_by").order_by("-created_at"))


def revoke(invitation: Invitation, *, actor: Any, request: HttpRequest | None = None) -> bool:
    """Revoke a link not used yet; False when it was already used or revoked."""
    now = timezone.now()
    done = Invitation.objects.filter(pk=invitation.pk, used_at__isnull=True,
                                     revoked_at__isnull=True).update(revoked_at=now)
    if done:
        invitation.revoked_at = now
        audit.record(INVITATION_REVOKED, actor=actor, request=request,
                     target=f"invitation {invitation.pk}", details=_details(invitation))
    return bool(done)


def find(token: str) -> Invitation | None:
    """The invitation a link names, whatever its state; None for no such link."""
    if not token or len(token) > _TOKEN_MAX_CHARS:
        return None
    return (Invitation.objects.select_related("team", "created_by")
            .filter(token_hash=hash_token(token)).first())


class InvitationGone(Exception):
    """The link was used, revoked or has expired (maybe a moment ago, in another tab)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "used", "revoked" or "expired"


class WrongAccount(Exception):
    """The invitation is bound to another e-mail address than the signed-in account's."""


def state(invitation: Invitation, now: datetime | None = None) -> str:
    """"valid", "used", "revoked" or "expired"."""
    if invitation.used_at is not None:
        return "used"
    if invitation.revoked_at is not None:
        return "revoked"
    if invitation.expires_at <= (now or timezone.now()):
        return "expired"
    return "valid"


def email_matches(invitation: Invitation, user: Any) -> bool:
    return not invitation.email or (
        (user.email or "").strip().lower() == invitation.email.strip().lower())


def already_in(invitation: Invitation, user: Any) -> bool:
    """Would using this link change nothing for `user` (already a member, with the role)?"""
    team = invitation.team
    if team is None:
        return True
    if not user.groups.filter(pk=team.pk).exists():
        return False
    return invitation.role != Invitation.Role.MANAGER or services.settings_for(
        team).managers.filter(pk=user.pk).exists()


def _claim(invitation: Invitation, user: Any) -> None:
    """Mark the link used by `user`: one conditional UPDATE, so only one use ever wins."""
    now = timezone.now()
    won = Invitation.objects.filter(
        pk=invitation.pk, used_at__isnull=True, revoked_at__isnull=True, expires_at__gt=now,
    ).update(used_at=now, used_by=user)
    if not won:
        invitation.refresh_from_db()
        raise InvitationGone(state(invitation, now) if state(invitation, now) != "valid"
                             else "used")
    invitation.used_at, invitation.used_by = now, user


def _join(invitation: Invitation, user: Any, request: HttpRequest | None) -> None:
    team = invitation.team
    with audit.acting(request, actor=user):
        if team is not None:
            if invitation.role == Invitation.Role.MANAGER:
                services.make_manager_member(team, user)
            else:
                team.user_set.add(user)
        audit.record(INVITATION_USED, actor=user, request=request,
                     target=f"invitation {invitation.pk}",
                     details={**_details(invitation), "username": user.get_username()})


def accept(invitation: Invitation, user: Any, request: HttpRequest | None = None) -> None:
    """A signed-in account uses the link and joins its team with its role."""
    if not email_matches(invitation, user):
        raise WrongAccount
    with transaction.atomic():
        _claim(invitation, user)
        _join(invitation, user, request)


def accept_as_new(invitation: Invitation, *, username: str, email: str, password: str,
                  request: HttpRequest | None = None) -> Any:
    """Create the account and use the link in one transaction: if the link was used
    meanwhile, no account is left behind. The e-mail of a bound link is the link's."""
    email = invitation.email or email
    try:
        with transaction.atomic():
            if User.objects.filter(username__iexact=username).exists():
                raise TeamRefused(_("This username is taken; choose another."))
            user = User.objects.create_user(username=username, email=email,
                                            password=password)
            _claim(invitation, user)
            _join(invitation, user, request)
    except IntegrityError:  # the same name, created meanwhile
        raise TeamRefused(_("This username is taken; choose another.")) from None
    return user
