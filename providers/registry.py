"""Provider kind -> client class, and the one way to build a client from a ProviderConfig."""

from __future__ import annotations

from urllib.parse import urlsplit

from providers.base import ErrorKind, ProviderClient, ProviderConfig, ProviderError
from providers.catalogue import OFFICIAL_BASE_URLS
from providers.cloudflare import CloudflareClient
from providers.dashscope import DashScopeClient
from providers.qianfan import QianfanClient, TokenCache

CLIENT_CLASSES: dict[str, type] = {
    "cloudflare": CloudflareClient,
    "dashscope": DashScopeClient,
    "qianfan": QianfanClient,
}

def is_official_base_url(kind: str, base_url: str) -> bool:
    """True when `base_url` is https on one of the vendor's official hosts."""
    parts = urlsplit(base_url)
    hosts = {urlsplit(url).hostname for url in OFFICIAL_BASE_URLS.get(kind, ())}
    return parts.scheme == "https" and parts.hostname in hosts and parts.username is None


def get_client(config: ProviderConfig, *, token_cache: TokenCache | None = None) -> ProviderClient:
    """A ready client for `config`; `token_cache` only matters for Qianfan."""
    if config.kind == "qianfan":
        return QianfanClient(config, token_cache=token_cache)
    cls = CLIENT_CLASSES.get(config.kind)
    if cls is None:
        raise ProviderError(
            ErrorKind.BAD_REQUEST,
            f"Unknown provider kind {config.kind!r}; known: {', '.join(sorted(CLIENT_CLASSES))}.",
        )
    client: ProviderClient = cls(config)
    return client
