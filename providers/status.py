"""Each provider's health, from the last call or connection test that reached it.

Every answer (web page, `/v1`, titles) and every "Test connection" ends in `record_success`
or `record_failure`, so a provider's failure shows on the providers page, in `/healthz` (for
superusers) and in `providers_check` after one call (a success right after a recorded success
is not written again for OK_REFRESH_SECONDS: the status is already "ok"). Each write is one
UPDATE of the status columns (no `save()`: the audit trail records configuration, not
operations), and `failing_since` keeps the time of the first failure after a success.

A failure that says nothing about the provider's health is not recorded: a request the vendor
refused as malformed (`bad_request`: too long, a parameter out of range) or content its
moderation refused (`content_filtered`). What is stored as the last error went through
`redact.scrub` with the account's own credentials (T14/T15).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.cache import cache
from django.db.models import Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_variables

from providers.base import ErrorKind
from providers.models import Provider
from providers.redact import scrub

log = logging.getLogger(__name__)

# Kinds that describe the request or its content, not the provider's health.
NOT_A_PROVIDER_FAILURE = frozenset({ErrorKind.BAD_REQUEST.value,
                                    ErrorKind.CONTENT_FILTERED.value})
MAX_ERROR_CHARS = 2000
# How long a recorded success spares the next successes their write (see record_success).
OK_REFRESH_SECONDS = 30

OK = "ok"
FAILING = "failing"
UNTESTED = "untested"
DISABLED = "disabled"
STATE_LABELS = {OK: _("ok"), FAILING: _("failing"), UNTESTED: _("not tested"),
                DISABLED: _("disabled")}


def counts_as_failure(kind: str) -> bool:
    return kind not in NOT_A_PROVIDER_FAILURE


def _ok_key(provider_id: int) -> str:
    return f"provider-status-ok:{provider_id}"


def record_success(provider_id: int, *, latency_ms: int | None = None,
                   force: bool = False) -> None:
    """The provider answered: it works (again).

    A busy site answers many times a second: while the row already says "ok" (written less
    than OK_REFRESH_SECONDS ago, as the cache remembers: shared through Redis when configured),
    an answer's success writes nothing. A failure forgets that note, so the next success writes
    at once; a connection test always writes (`force`).
    """
    if not force and cache.get(_ok_key(provider_id)):
        return
    fields: dict[str, Any] = {
        "last_status": Provider.Status.OK, "last_error": "", "last_error_kind": "",
        "failing_since": None, "last_checked_at": timezone.now()}
    if latency_ms is not None:
        fields["last_latency_ms"] = latency_ms
    Provider.objects.filter(pk=provider_id).update(**fields)
    cache.set(_ok_key(provider_id), True, timeout=OK_REFRESH_SECONDS)


@sensitive_variables("secrets")
def record_failure(provider_id: int, kind: str, message: str, *,
                   latency_ms: int | None = None) -> None:
    """The provider failed with `kind`; `message` is scrubbed of the account's keys."""
    cache.delete(_ok_key(provider_id))
    provider = Provider.objects.filter(pk=provider_id).first()
    if provider is None:
        return
    secrets = provider.get_credentials().values() if provider.credentials_readable() else ()
    now = timezone.now()
    fields: dict[str, Any] = {
        "last_status": Provider.Status.ERROR, "last_error_kind": kind[:40],
        "last_error": scrub(message, secrets)[:MAX_ERROR_CHARS], "last_checked_at": now,
        # The first failure after a success starts the clock; later ones keep it.
        "failing_since": Coalesce("failing_since", Value(now)),
    }
    if latency_ms is not None:
        fields["last_latency_ms"] = latency_ms
    Provider.objects.filter(pk=provider_id).update(**fields)
    log.info("provider %s: call failed (%s)", provider.kind, kind)


def record_call(provider_id: int, *, ok: bool, kind: str = "", message: str = "",
                latency_ms: int | None = None, force: bool = False) -> None:
    """One call's outcome; failures that are the request's own fault are left out."""
    if ok:
        record_success(provider_id, latency_ms=latency_ms, force=force)
    elif counts_as_failure(kind):
        record_failure(provider_id, kind, message, latency_ms=latency_ms)


@dataclass(frozen=True)
class ProviderState:
    """What the providers page, /healthz and providers_check say about one provider."""

    provider: Provider
    state: str  # OK | FAILING | UNTESTED | DISABLED

    @property
    def label(self) -> str:
        return str(STATE_LABELS[self.state])

    @property
    def failing_since(self) -> datetime | None:
        return self.provider.failing_since if self.state == FAILING else None

    @property
    def last_error_kind(self) -> str:
        return self.provider.last_error_kind if self.state == FAILING else ""

    @property
    def last_error(self) -> str:
        """The stored message, scrubbed once more: older rows predate this module."""
        if self.state != FAILING:
            return ""
        provider = self.provider
        secrets = provider.get_credentials().values() if provider.credentials_readable() else ()
        text = scrub(provider.last_error, secrets)
        # A connection test stores "kind: message"; the kind is shown on its own.
        prefix = f"{provider.last_error_kind}: "
        return text[len(prefix):] if provider.last_error_kind and text.startswith(prefix) else text

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON: no key, no mask, no base URL."""
        provider = self.provider
        return {
            "kind": provider.kind, "name": provider.name, "enabled": provider.enabled,
            "configured": provider.is_configured, "status": self.state,
            "failing_since": _iso(self.failing_since),
            "last_error_kind": self.last_error_kind or None,
            "last_checked_at": _iso(provider.last_checked_at),
        }


def state_of(provider: Provider) -> ProviderState:
    if not provider.enabled:
        state = DISABLED
    elif provider.last_status == Provider.Status.ERROR:
        state = FAILING
    elif provider.last_status == Provider.Status.OK:
        state = OK
    else:
        state = UNTESTED
    return ProviderState(provider, state)


def states() -> list[ProviderState]:
    return [state_of(p) for p in Provider.objects.order_by("kind")]


def summary() -> list[dict[str, Any]]:
    """Every provider's state as JSON-ready dicts (for /healthz)."""
    return [s.as_dict() for s in states()]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


__all__ = ["DISABLED", "FAILING", "OK", "UNTESTED", "ProviderState", "counts_as_failure",
           "record_call", "record_failure", "record_success", "state_of", "states", "summary"]
