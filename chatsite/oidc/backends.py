"""Signing in through the identity provider, and the password gate of OIDC_ONLY.

mozilla-django-oidc does the code exchange (client authentication, PKCE), picks the signing key
from the provider's JWKS by `kid` and `alg`, and PyJWT checks the RS256 signature. What the
library leaves out we add here (see docs/deployment.md, "Single sign-on"):

- the ID token's `iss` must equal OIDC_ISSUER, `aud` must hold OIDC_CLIENT_ID (and `azp` name it
  when there are several audiences), `exp` and `iat` must be present and `exp` in the future
  (60 s leeway), and `nonce` must be the one this browser's sign-in started with;
- an account is found by (issuer, subject) first, then by e-mail only when the provider says
  `email_verified`, else created (ALLOW_SIGNUP does not matter); inactive accounts are refused;
- OIDC_ALLOWED_DOMAINS applies to every sign-in, on a verified address;
- team membership follows OIDC_TEAMS_CLAIM at each sign-in (`sync_teams`).

Every refusal is a `Refused(reason)`; the view turns it into a page. Nothing here logs a token,
a code or the client secret.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import jwt
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, SuspiciousOperation
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from chatsite.models import ExternalIdentity
from chatsite.oidc import discovery

log = logging.getLogger(__name__)

LEEWAY_SECONDS = 60
_USERNAME_UNSAFE = re.compile(r"[^\w.@+-]+")


class Refused(Exception):
    """A sign-in this site will not accept. `reason` is a short code (never a secret)."""

    def __init__(self, reason: str, **details: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details


@dataclass
class SignIn:
    user: Any
    linked_by: str  # identity | email | created
    teams_added: list[str] = field(default_factory=list)
    teams_removed: list[str] = field(default_factory=list)

    def details(self) -> dict[str, Any]:
        return {"issuer": settings.OIDC_ISSUER, "linked_by": self.linked_by,
                "teams_added": self.teams_added, "teams_removed": self.teams_removed}


def _email_verified(claims: dict[str, Any]) -> bool:
    value = claims.get("email_verified")
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _domain_allowed(email: str) -> bool:
    allowed = settings.OIDC_ALLOWED_DOMAINS
    return not allowed or email.rpartition("@")[2].lower() in allowed


class OIDCBackend(OIDCAuthenticationBackend):  # type: ignore[misc]
    """Only `sign_in()` (called by the callback view) signs anyone in: `authenticate()`, which
    Django calls for every password sign-in too, answers None without touching the network."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Not the library's __init__: it reads endpoints from settings; ours come from discovery.
        self.UserModel = get_user_model()
        self.OIDC_RP_SIGN_ALGO = settings.OIDC_RP_SIGN_ALGO
        self.OIDC_RP_IDP_SIGN_KEY = None
        self.OIDC_RP_CLIENT_ID = settings.OIDC_CLIENT_ID
        self.OIDC_RP_CLIENT_SECRET = settings.OIDC_CLIENT_SECRET
        self.OIDC_OP_TOKEN_ENDPOINT = ""
        self.OIDC_OP_USER_ENDPOINT = ""
        self.OIDC_OP_JWKS_ENDPOINT = ""

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> None:
        return None

    def get_user(self, user_id: Any) -> Any:
        # Django's (the library's skips is_active): a disabled account's sessions end at once.
        return ModelBackend.get_user(self, user_id)

    # --- the exchange -------------------------------------------------------------------------
    def sign_in(self, request: HttpRequest, *, code: str, nonce: str,
                code_verifier: str | None, redirect_uri: str) -> SignIn:
        try:
            op = discovery.provider()
        except discovery.DiscoveryError as exc:
            raise Refused(exc.kind) from None
        self.request = request
        self.OIDC_OP_TOKEN_ENDPOINT = op.token_endpoint
        self.OIDC_OP_JWKS_ENDPOINT = op.jwks_uri
        self.OIDC_OP_USER_ENDPOINT = op.userinfo_endpoint
        payload = {"client_id": self.OIDC_RP_CLIENT_ID,
                   "client_secret": self.OIDC_RP_CLIENT_SECRET,
                   "grant_type": "authorization_code", "code": code,
                   "redirect_uri": redirect_uri}
        if code_verifier:
            payload["code_verifier"] = code_verifier
        try:
            tokens = self.get_token(payload)
            id_token = tokens.get("id_token") if isinstance(tokens, dict) else None
            if not isinstance(id_token, str) or not id_token:
                raise Refused("invalid_token")
            claims = self.verify_token(id_token, nonce=nonce)
            access_token = tokens.get("access_token")
            if self.OIDC_OP_USER_ENDPOINT and isinstance(access_token, str) and access_token:
                info = self.get_userinfo(access_token, id_token, claims)
                # OpenID Connect Core 5.3.2: userinfo about another subject must not be used.
                if isinstance(info, dict) and str(info.get("sub")) == str(claims["sub"]):
                    claims = {**info, **claims}  # the signed ID token wins
        except (requests.RequestException, ValueError) as exc:
            raise Refused("unreachable", error=type(exc).__name__) from None
        return self.resolve(claims)

    def raise_token_response_error(self, response: requests.Response) -> None:
        """The library's version puts the provider's whole answer into the exception text."""
        if response.status_code == 200:
            return
        try:
            error = str(response.json().get("error", ""))[:60]
        except (ValueError, AttributeError):
            error = ""
        if error == "invalid_grant":  # an expired, used or unknown code
            raise Refused("code_refused")
        raise Refused("client_refused", status=response.status_code, error=error)

    def retrieve_matching_jwk(self, token: str) -> Any:
        try:
            return super().retrieve_matching_jwk(token)
        except (SuspiciousOperation, KeyError, jwt.PyJWTError):
            raise Refused("bad_signature", error="no matching key") from None

    def verify_token(self, token: str, **kwargs: Any) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Refused("invalid_token") from None
        if header.get("alg") != self.OIDC_RP_SIGN_ALGO:
            raise Refused("bad_signature", error="algorithm")
        key = self.retrieve_matching_jwk(token)
        claims = self._verify_jws(token, key)
        if kwargs.get("nonce") is not None and claims.get("nonce") != kwargs["nonce"]:
            raise Refused("nonce_mismatch")
        return claims

    def _verify_jws(self, payload: str, key: Any) -> dict[str, Any]:
        """Signature, issuer, audience and lifetime; the library checks the signature only."""
        client_id = self.OIDC_RP_CLIENT_ID
        try:
            claims: dict[str, Any] = jwt.decode(
                payload, key, algorithms=[self.OIDC_RP_SIGN_ALGO], audience=client_id,
                issuer=settings.OIDC_ISSUER, leeway=LEEWAY_SECONDS,
                options={"require": ["iss", "sub", "aud", "exp", "iat"]})
        except jwt.InvalidSignatureError:
            raise Refused("bad_signature") from None
        except jwt.ExpiredSignatureError:
            raise Refused("expired_token") from None
        except jwt.InvalidIssuerError:
            raise Refused("wrong_issuer") from None
        except jwt.InvalidAudienceError:
            raise Refused("wrong_audience") from None
        except jwt.PyJWTError as exc:
            raise Refused("invalid_token", error=type(exc).__name__) from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != client_id:
            raise Refused("wrong_audience")
        return claims

    # --- the account --------------------------------------------------------------------------
    def resolve(self, claims: dict[str, Any]) -> SignIn:
        try:
            return self._resolve(claims)
        except IntegrityError:
            # Two first sign-ins of one person at once: the other one linked it; use that.
            return self._resolve(claims)

    def _resolve(self, claims: dict[str, Any]) -> SignIn:
        issuer = settings.OIDC_ISSUER
        subject = str(claims["sub"])[:255]
        email = str(claims.get("email") or "").strip()
        verified = bool(email) and _email_verified(claims)
        if settings.OIDC_ALLOWED_DOMAINS:
            if not email:
                raise Refused("no_email")
            if not verified:
                raise Refused("email_unverified")
            if not _domain_allowed(email):
                raise Refused("domain_not_allowed", domain=email.rpartition("@")[2][:100])
        with transaction.atomic():
            identity = (ExternalIdentity.objects.select_related("user")
                        .filter(issuer=issuer, subject=subject).first())
            if identity is not None:
                user, linked_by = identity.user, "identity"
            else:
                if not email:
                    raise Refused("no_email")
                if not verified:
                    raise Refused("email_unverified")
                matches = list(self.UserModel._default_manager.filter(email__iexact=email)[:2])
                if len(matches) > 1:
                    raise Refused("email_ambiguous")
                if matches:
                    user, linked_by = matches[0], "email"
                else:
                    user, linked_by = self._create(claims, email), "created"
            if not user.is_active:
                raise Refused("inactive", user=user.pk)
            ExternalIdentity.objects.update_or_create(
                issuer=issuer, subject=subject,
                defaults={"user": user, "email": email[:254] if verified else "",
                          "last_login_at": timezone.now()})
            added, removed = sync_teams(user, claims)
        return SignIn(user, linked_by, added, removed)

    def _create(self, claims: dict[str, Any], email: str) -> Any:
        base = _username_base(claims, email)
        manager = self.UserModel._default_manager
        name, n = base, 1
        while manager.filter(username__iexact=name).exists():
            n += 1
            name = f"{base[:140]}-{n}"
        user = manager.create_user(name, email=email)  # no password: it is unusable
        user.first_name = str(claims.get("given_name") or "")[:150]
        user.last_name = str(claims.get("family_name") or "")[:150]
        user.save(update_fields=["first_name", "last_name"])
        return user


def _username_base(claims: dict[str, Any], email: str) -> str:
    for candidate in (claims.get("preferred_username"), email.partition("@")[0]):
        cleaned = _USERNAME_UNSAFE.sub("-", str(candidate or "")).strip("-.")[:150]
        if cleaned:
            return cleaned
    return "user"


def _claim_values(claims: dict[str, Any]) -> list[str] | None:
    """The teams claim's values; None when the token does not carry the claim at all."""
    name = settings.OIDC_TEAMS_CLAIM
    if not name or name not in claims:
        return None
    raw = claims[name]
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list):
        return [str(item) for item in raw if isinstance(item, str | int)]
    return []


def sync_teams(user: Any, claims: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Make the user's membership of the *managed* teams what the claim says.

    With OIDC_TEAM_MAP the teams it names are managed: added and removed as the claim says.
    Without a map the claim's values are team names and only ever add: a person invited to a
    team, or added by its manager, is not removed because the provider does not know that team.
    Teams outside the map are left alone, and so is everything when the token lacks the claim.
    Teams that do not exist are not created. Uses user.groups.add/remove, so the signals that
    close sockets and write the audit trail run as for any other change.
    """
    values = _claim_values(claims)
    if values is None:
        return [], []
    mapping: dict[str, str] = settings.OIDC_TEAM_MAP
    if mapping:
        wanted_names = {mapping[value] for value in values if value in mapping}
        managed = list(Group.objects.filter(name__in=set(mapping.values())))
    else:
        wanted_names = set(values)
        managed = list(Group.objects.filter(name__in=wanted_names))
    by_pk = {team.pk: team for team in managed}
    wanted = {team.pk for team in managed if team.name in wanted_names}
    current = set(user.groups.filter(pk__in=by_pk).values_list("pk", flat=True))
    to_add = wanted - current
    to_remove = current - wanted if mapping else set()
    if to_add:
        user.groups.add(*to_add)
    if to_remove:
        user.groups.remove(*to_remove)
    missing = wanted_names - {team.name for team in managed}
    if missing:
        log.info("sso: %d team name(s) from the claim match no team", len(missing))
    return (sorted(by_pk[pk].name for pk in to_add), sorted(by_pk[pk].name for pk in to_remove))


class PasswordGateBackend:
    """With OIDC_ONLY, a password signs in superusers only (the break-glass administrators).

    It only refuses, and answers like a wrong password (same message, a password hash computed
    either way), so the form tells nobody which accounts exist or are superusers."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None,
                     password: str | None = None, **kwargs: Any) -> None:
        if not settings.OIDC_ONLY or not username:
            return None
        model = get_user_model()
        user = model._default_manager.filter(**{model.USERNAME_FIELD: username}).first()
        if user is not None and not user.is_superuser:
            model().set_password(password)  # the time a password check takes
            raise PermissionDenied("single sign-on only")
        return None
