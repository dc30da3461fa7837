"""The error pages (400, 403, CSRF failure, 404, 500) in the product's own layout, in the
reader's language, each saying what to do next. Scripts and API clients (Accept:
application/json, or anything under /v1/) get the same refusal as JSON instead.

The 500 page is rendered without the request context: no context processors, so neither the
session, the user nor the database is touched while something is already broken.
"""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template import loader
from django.urls import reverse
from django.utils.http import urlencode
from django.utils.translation import gettext as _

log = logging.getLogger(__name__)

SITE_NAME = "Llama Chat"


def _wants_json(request: HttpRequest) -> bool:
    return (request.path.startswith("/v1/")
            or "application/json" in request.headers.get("Accept", ""))


def _json(status: int, code: str, message: str) -> JsonResponse:
    # Readable by the page's scripts ({error: {code, message}}) and by OpenAI clients.
    kind = "api_error" if status >= 500 else "invalid_request_error"
    return JsonResponse({"error": {"message": message, "type": kind, "param": None,
                                   "code": code}}, status=status)


def _signed_in(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated)


def _ways_on(request: HttpRequest, *, come_back: bool = True) -> list[dict[str, str]]:
    """Links out of an error: back to the conversations, or to the sign-in page (and from there
    back here, when signing in may be what was missing)."""
    if _signed_in(request):
        return [{"url": reverse("home"), "label": _("Back to your conversations")}]
    login = reverse("login")
    if come_back and request.method == "GET" and not request.path.startswith(login):
        login += "?" + urlencode({"next": request.get_full_path()[:500]})
    return [{"url": login, "label": _("Sign in")}]


def _page(request: HttpRequest, status: int, code: str, title: str, lead: str,
          advice: str = "", ways: list[dict[str, str]] | None = None) -> HttpResponse:
    if _wants_json(request):
        return _json(status, code, lead)
    context = {"status": status, "title": title, "lead": lead, "advice": advice,
               "ways": ways if ways is not None else _ways_on(request)}
    return render(request, "error.html", context, status=status)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _page(request, 400, "bad_request", _("This request could not be read"),
                 _("Something in the address or the form was malformed, so nothing was "
                   "changed."),
                 _("Go back, reload the page and try again."))


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _page(request, 403, "forbidden", _("You do not have access to this page"),
                 _("Your account is not allowed to see or change this."),
                 _("If you think you should have access, ask the owner or an administrator."))


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    # Django has logged the reason (django.security.csrf); the reader gets what to do.
    return _page(request, 403, "csrf_failed", _("This form has expired"),
                 _("The page was open for a long time, you signed in or out in another tab, "
                   "or your browser blocked this site's cookies. Nothing was sent."),
                 _("Reload the page and send the form again."))


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    path = request.path
    if path.startswith("/s/"):
        return _page(request, 404, "not_found", _("This share link no longer works"),
                     _("The link was revoked, has expired, or was copied incompletely."),
                     _("Ask the person who shared it with you for a new link."),
                     _ways_on(request, come_back=False))
    if path.startswith(reverse("signup")):
        return _page(request, 404, "not_found", _("Sign-up is closed"),
                     _("New accounts on this site are made by an administrator."),
                     _("Ask an administrator for an account, then sign in."),
                     _ways_on(request, come_back=False))
    if path.startswith("/c/"):
        return _page(request, 404, "not_found", _("Conversation not found"),
                     _("It does not exist, it was deleted, or it is not shared with you."),
                     _("If a teammate sent you here, ask them to share it with your team or "
                       "to make a share link."))
    return _page(request, 404, "not_found", _("Page not found"),
                 _("There is nothing at this address."),
                 _("Check the address, or start again from your conversations."))


def server_error(request: HttpRequest) -> HttpResponse:
    lead = _("Something went wrong on our side. It was logged; nothing you did caused it.")
    if _wants_json(request):
        return _json(500, "internal", lead)
    try:
        # No request: no context processors, no session, no database.
        body = loader.get_template("500.html").render({
            "SITE_NAME": SITE_NAME, "status": 500, "title": _("Something went wrong"),
            "lead": lead, "advice": _("Try again in a moment. If it keeps happening, tell "
                                      "an administrator what you were doing."),
            "ways": [{"url": "/", "label": _("Go to the start page")}]})
    except Exception:  # the last resort must not fail in turn
        log.exception("the 500 page could not be rendered")
        body = "<!doctype html><title>500</title><h1>Server error</h1>"
    return HttpResponse(body, status=500)

