"""Writes and checks on provider accounts: environment sync, test connection, clients."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import transaction
from django.views.decorators.debug import sensitive_variables

from providers import catalogue, crypto, status
from providers.base import (
    ChatRequest,
    Delta,
    ErrorKind,
    Finish,
    ImagePart,
    Message,
    ProviderClient,
    ProviderError,
)
from providers.models import (
    BASE_URL_ENV,
    CREDENTIAL_FIELDS,
    ModelConfig,
    Provider,
    validate_base_url,
)
from providers.registry import get_client

logger = logging.getLogger(__name__)

UNREADABLE_MESSAGE = "Stored credentials cannot be decrypted: enter them again."
MISSING_MESSAGE = "Credentials are missing."
PROBE_PROMPT = "Reply with the single word: ok"
PROBE_IMAGE = Path(settings.BASE_DIR) / "static" / "img" / "probe.png"


class DjangoTokenCache:
    """Qianfan access tokens in Django's cache: shared by every process when Redis is set."""

    async def get(self, key: str) -> str | None:
        value = await cache.aget(f"qianfan-token:{key}")
        return value if isinstance(value, str) else None

    async def set(self, key: str, value: str, ttl_seconds: float) -> None:
        await cache.aset(f"qianfan-token:{key}", value, timeout=max(1, int(ttl_seconds)))


_token_cache = DjangoTokenCache()


def client_for(provider: Provider) -> ProviderClient:
    """A client for this account. Raises CredentialsUnreadable / ValidationError."""
    return get_client(provider.client_config(), token_cache=_token_cache)


# --- environment ----------------------------------------------------------------------------
@sensitive_variables("environ")
def sync_from_env(environ: Mapping[str, str]) -> list[str]:
    """Create or update provider rows from CLOUDFLARE_*, DASHSCOPE_*, QIANFAN_* variables.

    Idempotent: a second run with the same environment writes nothing. A provider's
    credentials are only replaced when every one of its variables is set (a half-configured
    environment never wipes a working key). Raises ValidationError naming the variable when a
    *_BASE_URL is not allowed for that provider. Returns a line per change (never a secret).
    """
    changes: list[str] = []
    # A `with` block, not the decorator: the decorator's frame would show `environ` in error
    # reports, past sensitive_variables.
    with transaction.atomic():
        catalogue.seed(Provider, ModelConfig)
        for provider in Provider.objects.select_for_update():
            lines = _apply_env(provider, environ)
            if lines:
                provider.full_clean()
                provider.save()
                changes.extend(lines)
    for line in changes:
        logger.info("provider settings: %s", line)
    return changes


@sensitive_variables("environ", "values")
def _apply_env(provider: Provider, environ: Mapping[str, str]) -> list[str]:
    """Set what the environment says on `provider` (unsaved); one line per change."""
    changes: list[str] = []
    env_name = BASE_URL_ENV[provider.kind]
    base_url = environ.get(env_name, "").strip().rstrip("/")
    if base_url and base_url != provider.base_url:
        try:
            validate_base_url(provider.kind, base_url)
        except ValidationError as exc:
            raise ValidationError(f"{env_name}: {' '.join(exc.messages)}") from None
        provider.base_url = base_url
        changes.append(f"{provider.kind}: base URL from {env_name}")
    values = {f.name: environ.get(f.env, "").strip() for f in CREDENTIAL_FIELDS[provider.kind]}
    if all(values.values()):
        same = provider.credentials_readable() and provider.get_credentials() == values
        if not same or not provider.managed_by_env:
            provider.set_credentials(values)
            provider.managed_by_env = True
            changes.append(f"{provider.kind}: credentials from the environment")
    elif provider.managed_by_env:
        # The stored keys stay (the admin can now edit them); only the lock is lifted.
        provider.managed_by_env = False
        changes.append(f"{provider.kind}: no longer managed by the environment")
    return changes


# --- checks ---------------------------------------------------------------------------------
@dataclass
class ProbeResult:
    model: str
    ok: bool
    kind: str  # "ok" or an ErrorKind value, or "config"
    message: str = ""
    ttft_ms: int | None = None
    duration_ms: int | None = None
    completion_tokens: int | None = None


def probe_request(model: ModelConfig) -> ChatRequest:
    images: tuple[ImagePart, ...] = ()
    if model.vision and (model.requires_image or model.provider.kind == "cloudflare"):
        images = (ImagePart(data=PROBE_IMAGE.read_bytes(), mime_type="image/png",
                            url=f"{settings.SITE_URL}/static/img/probe.png"),)
    params = {"max_tokens": 16} if "max_tokens" in model.param_specs() else {}
    return ChatRequest(model=model.model_id, params=params,
                       messages=(Message(role="user", text=PROBE_PROMPT, images=images),))


async def probe_model(model: ModelConfig) -> ProbeResult:
    started = time.perf_counter()
    ttft: float | None = None
    try:
        client = client_for(model.provider)
    except crypto.CredentialsUnreadable:
        return ProbeResult(model.slug, False, "config", UNREADABLE_MESSAGE)
    except ValidationError as exc:  # the stored base URL is no longer allowed
        return ProbeResult(model.slug, False, "config", " ".join(exc.messages))
    try:
        finish: Finish | None = None
        async for item in client.stream(probe_request(model)):
            if isinstance(item, Delta) and ttft is None:
                ttft = time.perf_counter() - started
            elif isinstance(item, Finish):
                finish = item
    except ProviderError as exc:
        return ProbeResult(model.slug, False, exc.kind.value, exc.message)
    finally:
        await client.aclose()
    elapsed = time.perf_counter() - started
    return ProbeResult(
        model.slug, True, "ok", "",
        ttft_ms=None if ttft is None else round(ttft * 1000),
        duration_ms=round(elapsed * 1000),
        completion_tokens=finish.usage.completion_tokens if finish and finish.usage else None,
    )


def test_connection(provider: Provider) -> ProbeResult:
    """Call the provider with a tiny prompt and record status, latency and last error."""
    model = provider.models.filter(enabled=True).order_by("vision", "sort_order").first()
    if model is None:
        model = provider.models.order_by("vision", "sort_order").first()
    if model is None:
        result = ProbeResult("-", False, "config", "This provider has no model in the catalogue.")
    else:
        result = config_problem(provider, model.slug) or async_to_sync(probe_model)(model)
    _record(provider, result)
    logger.info("provider %s: test connection %s", provider.kind,
                "ok" if result.ok else f"failed ({result.kind})")
    return result


def config_problem(provider: Provider, slug: str) -> ProbeResult | None:
    """Why this provider cannot be called at all, as a failed result; None when it can."""
    if not provider.credentials_readable():
        return ProbeResult(slug, False, "config", UNREADABLE_MESSAGE)
    if not provider.is_configured:
        return ProbeResult(slug, False, "config", MISSING_MESSAGE)
    return None


def _record(provider: Provider, result: ProbeResult) -> None:
    """Store the outcome on the row (providers/status.py: status, failing since, last error;
    the message is scrubbed of the account's keys there), and on `provider` itself."""
    if result.ok:
        status.record_success(provider.pk, latency_ms=result.duration_ms, force=True)
    else:  # an explicit test: every failure counts, a missing key too
        status.record_failure(provider.pk, result.kind, f"{result.kind}: {result.message}",
                              latency_ms=result.duration_ms)
    provider.refresh_from_db(fields=["last_status", "last_error", "last_error_kind",
                                     "failing_since", "last_latency_ms", "last_checked_at"])


__all__ = ["DjangoTokenCache", "ErrorKind", "ProbeResult", "client_for", "config_problem",
           "probe_model", "sync_from_env", "test_connection"]
