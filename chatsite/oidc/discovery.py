"""The identity provider's discovery document (/.well-known/openid-configuration).

Fetched on the first sign-in and kept for an hour per process; the document must name the
configured issuer exactly (OpenID Connect Discovery 1.0, section 4.3), else nothing from it is
used. The JWKS it points to is read at each sign-in by mozilla-django-oidc (keys rotate).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
from django.conf import settings

_TTL_SECONDS = 3600
_lock = threading.Lock()
_cache: dict[str, tuple[float, Provider]] = {}


class DiscoveryError(Exception):
    """The provider could not be reached, or its document is unusable. `kind` says which."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Provider:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str


def _fetch(issuer: str) -> Provider:
    url = issuer + "/.well-known/openid-configuration"
    try:
        response = requests.get(url, timeout=settings.OIDC_TIMEOUT)
        response.raise_for_status()
        document: Any = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise DiscoveryError("unreachable", f"discovery failed: {type(exc).__name__}") from None
    if not isinstance(document, dict):
        raise DiscoveryError("bad_discovery", "discovery document is not an object")
    if document.get("issuer") != issuer:
        raise DiscoveryError("wrong_issuer", "discovery document names another issuer")
    try:
        return Provider(
            issuer=issuer,
            authorization_endpoint=str(document["authorization_endpoint"]),
            token_endpoint=str(document["token_endpoint"]),
            jwks_uri=str(document["jwks_uri"]),
            userinfo_endpoint=str(document.get("userinfo_endpoint") or ""),
        )
    except KeyError as exc:
        raise DiscoveryError("bad_discovery", f"discovery document lacks {exc}") from None


def provider() -> Provider:
    """The configured issuer's endpoints (cached for an hour in this process)."""
    issuer = settings.OIDC_ISSUER
    now = time.monotonic()
    with _lock:
        cached = _cache.get(issuer)
        if cached and now - cached[0] < _TTL_SECONDS:
            return cached[1]
    found = _fetch(issuer)
    with _lock:
        _cache[issuer] = (now, found)
    return found


def forget() -> None:
    """Drop the cached documents (tests; or after the provider moved its endpoints)."""
    with _lock:
        _cache.clear()
