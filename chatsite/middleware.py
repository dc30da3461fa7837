"""Site-wide response headers and the first-administrator redirect."""

from __future__ import annotations

from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Any, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from whitenoise.middleware import WhiteNoiseMiddleware

from chatsite import bootstrap

# No inline scripts anywhere; model output may contain image markup, which must never load
# remote images (threat T04), hence img-src without remote hosts.
_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
# Django's admin sets style attributes inline; it still gets no inline scripts.
_CSP_ADMIN = _CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


class _BothModes:
    """A middleware both sync and async capable: it runs in the mode of the chain around it."""

    sync_capable = True
    async_capable = True
    is_async = False

    def _take_mode(self, get_response: Any) -> None:
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(cast(Any, self))  # a callable instance


class _SyncAndAsync(_BothModes):
    """Both sync and async capable, so async views (the API) avoid a thread hop per request."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self._take_mode(get_response)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        early = self.before(request)
        return early if early is not None else self.after(request, self.get_response(request))

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        early = await sync_to_async(self.before)(request) if self.needs_db else self.before(
            request)
        if early is not None:
            return early
        return self.after(request, await self.get_response(request))

    needs_db = False

    def before(self, request: HttpRequest) -> HttpResponse | None:
        return None

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return response


def _networks(values: list[str]) -> list[IPv4Network | IPv6Network]:
    return [ip_network(value.strip(), strict=False) for value in values if value.strip()]


def _address(value: str) -> IPv4Address | IPv6Address | None:
    try:
        return ip_address(value.strip().strip("[]"))
    except ValueError:
        return None


class ClientAddressMiddleware(_SyncAndAsync):
    """REMOTE_ADDR is the socket's peer; a forwarded address counts only from a trusted proxy.

    daphne runs without --proxy-headers, so anyone who reaches it directly cannot choose their
    own address (the login lockout is per address, threat T21). When the peer is one of
    TRUSTED_PROXIES, the client is the right-most X-Forwarded-For entry that is not itself a
    trusted proxy (proxies append; only the part our own proxies added can be believed).
    """

    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        self.trusted = _networks(settings.TRUSTED_PROXIES)

    def _is_trusted(self, value: str) -> bool:
        address = _address(value)
        return address is not None and any(address in net for net in self.trusted)

    def before(self, request: HttpRequest) -> HttpResponse | None:
        peer = request.META.get("REMOTE_ADDR", "")
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if not (self.trusted and forwarded and self._is_trusted(peer)):
            return None
        for hop in reversed(forwarded.split(",")):
            if not self._is_trusted(hop):
                client = _address(hop)
                if client is not None:
                    request.META["REMOTE_ADDR"] = str(client)
                    request.META["PROXY_ADDR"] = peer
                return None
        return None


class ContentSecurityPolicyMiddleware(_SyncAndAsync):
    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if "Content-Security-Policy" not in response:
            policy = _CSP_ADMIN if request.path.startswith("/admin/") else _CSP
            response["Content-Security-Policy"] = policy
        return response


_EXEMPT_PREFIXES = ("/setup/", "/static/", "/healthz", "/i18n/")


class FirstAdminMiddleware(_SyncAndAsync):
    """Send every page to the first-administrator form while the site has no user."""

    @property
    def needs_db(self) -> bool:  # type: ignore[override]
        return not bootstrap.known_bootstrapped()

    def before(self, request: HttpRequest) -> HttpResponse | None:
        if not request.path.startswith(_EXEMPT_PREFIXES) and bootstrap.needs_first_admin():
            return HttpResponseRedirect(reverse("first_admin"))
        return None


class StaticFilesMiddleware(_BothModes, WhiteNoiseMiddleware):
    """WhiteNoise, async-capable.

    WhiteNoise is sync only, and one sync middleware in an async chain costs every request two
    thread hops (into a thread for it, back to the loop for the rest of the chain) and puts the
    view's thread-sensitive work behind an AsyncToSync executor (issue 16: the POST path). The
    lookup is a dictionary read; only a file actually served goes through a thread.
    """

    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        self._take_mode(get_response)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request: HttpRequest) -> Any:
        if self.autorefresh:  # development: the file system is searched on every request
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)
