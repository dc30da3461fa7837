"""Site-wide response headers and the first-administrator redirect."""

from __future__ import annotations

from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

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


class _SyncAndAsync:
    """Both sync and async capable, so async views (the API) avoid a thread hop per request."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

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
