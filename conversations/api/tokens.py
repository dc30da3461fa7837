"""Personal API tokens: create (shown once), verify (by digest), revoke.

A token is "lc-" + 43 URL-safe characters (256 random bits). Only its SHA-256 digest is stored,
with the first 10 characters as a prefix so people can tell their tokens apart. The secret
never goes to a log record, an exception message or a repr (threat T15).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.debug import sensitive_variables

from conversations import audit
from conversations.models import ApiToken

TOKEN_PREFIX = "lc-"
PREFIX_LENGTH = 10
MAX_TOKEN_LENGTH = 100  # anything longer is not ours: refused without a database query
MAX_ACTIVE_TOKENS = 20  # per user; revoked tokens do not count
NAME_MAX_LENGTH = 80
LAST_USED_GRANULARITY = timedelta(minutes=1)  # at most one write a minute per token


class TokenRefused(Exception):
    """A token could not be created; the message is safe to show."""


@dataclass(frozen=True)
class NewToken:
    """A freshly created token. `secret` exists only here, once; it is never stored."""

    token: ApiToken
    secret: str = field(repr=False)


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


TOKEN_CREATED = "token.created"


def _audit(action: str, token: ApiToken, actor: Any, request: HttpRequest | None) -> None:
    # The prefix and name only: never the secret or its digest.
    audit.record(action, actor=actor, request=request, target=audit.target_of(token),
                 details={"name": token.name, "prefix": token.prefix, "owner": token.user_id})


@sensitive_variables("secret")
def create_token(user: Any, name: str, *, actor: Any = None,
                 request: HttpRequest | None = None) -> NewToken:
    """A new active token for `user`. Raises TokenRefused for a bad name or too many tokens."""
    name = " ".join(name.split())[:NAME_MAX_LENGTH]
    if not name:
        raise TokenRefused(_("Give the token a name, e.g. the script that will use it."))
    if not user.is_active:
        raise TokenRefused(_("This account is inactive; it cannot have API tokens."))
    with transaction.atomic():
        active = ApiToken.objects.filter(user=user, revoked_at__isnull=True).count()
        if active >= MAX_ACTIVE_TOKENS:
            raise TokenRefused(_("You already have %(n)s active tokens, the most allowed. "
                                 "Revoke one first.") % {"n": MAX_ACTIVE_TOKENS})
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = ApiToken.objects.create(user=user, name=name, prefix=secret[:PREFIX_LENGTH],
                                        digest=digest_of(secret))
        _audit(TOKEN_CREATED, token, actor or user, request)
    return NewToken(token=token, secret=secret)


@sensitive_variables("secret", "digest")
def verify(secret: str) -> ApiToken | None:
    """The active token for `secret` (its user loaded), or None.

    Refused: unknown or malformed tokens, revoked tokens, tokens of inactive users.
    """
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > MAX_TOKEN_LENGTH:
        return None
    digest = digest_of(secret)
    token = ApiToken.objects.select_related("user").filter(digest=digest).first()
    # The lookup already matched; the constant-time compare guards against a database
    # collation that compares case-insensitively or pads strings.
    if token is None or not hmac.compare_digest(token.digest, digest):
        return None
    if token.revoked_at is not None or not token.user.is_active:
        return None
    _touch(token)
    return token


def _touch(token: ApiToken) -> None:
    """Record use, at most once a minute (one conditional UPDATE, no read-modify-write)."""
    now = timezone.now()
    if token.last_used_at is not None and now - token.last_used_at < LAST_USED_GRANULARITY:
        return
    stale = now - LAST_USED_GRANULARITY
    ApiToken.objects.filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale),
                            pk=token.pk).update(last_used_at=now)
    token.last_used_at = now


@sensitive_variables("header", "secret")
def bearer_secret(header: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None for any other shape."""
    scheme, _sep, secret = header.strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret or " " in secret:
        return None
    return secret


def revoke(token: ApiToken, *, actor: Any, request: HttpRequest | None = None) -> bool:
    """Revoke at once; returns False when it was already revoked."""
    with transaction.atomic():
        updated = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now())
        if updated:
            token.refresh_from_db(fields=["revoked_at"])
            _audit(audit.TOKEN_REVOKED, token, actor, request)
    return bool(updated)


def tokens_of(user: Any) -> list[ApiToken]:
    return list(ApiToken.objects.filter(user=user).order_by(
        F("revoked_at").desc(nulls_first=True), "-created_at"))


__all__ = ["MAX_ACTIVE_TOKENS", "NewToken", "TokenRefused", "bearer_secret", "create_token",
           "digest_of", "revoke", "tokens_of", "verify"]
