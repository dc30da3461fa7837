"""The OIDC_* environment, parsed strictly (a malformed value stops the process at start)."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from chatsite.env import Env, env_list, env_str

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def parse_issuer(env: Env) -> str:
    """OIDC_ISSUER: https (plain http only on a loopback address, for local providers)."""
    raw = env_str(env, "OIDC_ISSUER").rstrip("/")
    if not raw:
        return ""
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ImproperlyConfigured(f"OIDC_ISSUER must be an https URL, not {raw!r}.")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        raise ImproperlyConfigured("OIDC_ISSUER must use https (http only on 127.0.0.1/localhost).")
    if parts.query or parts.fragment:
        raise ImproperlyConfigured("OIDC_ISSUER must not have a query or fragment.")
    return raw


def parse_domains(env: Env) -> list[str]:
    """OIDC_ALLOWED_DOMAINS: e-mail domains, lower case, without a leading @."""
    domains = [item.lower().lstrip("@") for item in env_list(env, "OIDC_ALLOWED_DOMAINS", [])]
    for domain in domains:
        if "." not in domain or "@" in domain or " " in domain:
            raise ImproperlyConfigured(
                f"OIDC_ALLOWED_DOMAINS entries are domains like example.com, not {domain!r}.")
    return domains


def parse_team_map(env: Env) -> dict[str, str]:
    """OIDC_TEAM_MAP: `claim value=Team name,...` -> {claim value: team name}."""
    mapping: dict[str, str] = {}
    for item in env_list(env, "OIDC_TEAM_MAP", []):
        value, sep, team = item.partition("=")
        if not sep or not value.strip() or not team.strip():
            raise ImproperlyConfigured(
                f"OIDC_TEAM_MAP entries look like claimvalue=Team name, not {item!r}.")
        mapping[value.strip()] = team.strip()
    return mapping
