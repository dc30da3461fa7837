"""/accounts/sso/login/ (off to the identity provider) and /accounts/sso/callback/ (back).

The start is mozilla-django-oidc's request view: a random `state` and `nonce` and a PKCE
verifier kept in the session under the state, and a `next` kept only when it is a safe local
address. The callback is ours, so that each refusal is a clear page in the product's layout
(400/403, 503 when the provider cannot be reached) and is audited, never a 500.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import login
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import resolve_url
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET
from django.views.generic import View
from mozilla_django_oidc.views import OIDCAuthenticationRequestView

from chatsite import error_pages
from chatsite.oidc import discovery
from chatsite.oidc.backends import OIDCBackend, Refused
from chatsite.oidc.signals import sso_refused, sso_signed_in

log = logging.getLogger(__name__)

BACKEND = "chatsite.oidc.backends.OIDCBackend"
STATE_MAX_AGE_SECONDS = 600  # a sign-in left open at the provider longer must start again


def button_label() -> str:
    return settings.OIDC_BUTTON_LABEL or _("Sign in with single sign-on")


def _untrusted(lead: str) -> tuple[int, str, str, str]:
    return (403, _("Single sign-on failed"), lead,
            _("The sign-in was stopped and nothing was changed. Try again; if it keeps "
              "happening, tell an administrator."))


def _texts(reason: str) -> tuple[int, str, str, str]:
    """(status, title, lead, advice) for each refusal, in the reader's language."""
    again = _("Start again from the sign-in page.")
    admin = _("Ask an administrator to check the single sign-on settings.")
    texts: dict[str, tuple[int, str, str, str]] = {
        "state_mismatch": (400, _("This sign-in could not be finished"),
                           _("It did not start in this browser, took too long, or was already "
                             "used."), again),
        "provider_error": (403, _("The identity provider did not sign you in"),
                           _("The sign-in was cancelled or refused at the identity provider."),
                           again),
        "code_refused": (400, _("This sign-in has expired"),
                         _("The identity provider no longer accepts it: it took too long or "
                           "was already used."), again),
        "wrong_issuer": _untrusted(_("The answer did not come from the identity provider this "
                                     "site trusts.")),
        "bad_signature": _untrusted(_("The identity provider's answer was not signed with its "
                                      "key: it may have been altered.")),
        "invalid_token": _untrusted(_("The identity provider's answer could not be read.")),
        "wrong_audience": _untrusted(_("The identity provider's answer was meant for another "
                                       "site.")),
        "expired_token": _untrusted(_("The identity provider's answer has expired. Check that "
                                      "your device's clock is right.")),
        "nonce_mismatch": _untrusted(_("The identity provider's answer does not belong to the "
                                       "sign-in started in this browser.")),
        "email_unverified": (403, _("Your e-mail address is not verified"),
                             _("The identity provider has not confirmed your e-mail address, so "
                               "it cannot be used to find or create your account here."),
                             _("Verify your address with your identity provider, then sign in "
                               "again.")),
        "domain_not_allowed": (403, _("This e-mail domain may not sign in here"),
                               _("Accounts from your e-mail domain are not allowed on this "
                                 "site."),
                               _("Sign in with your work account, or ask an administrator.")),
        "no_email": (403, _("Your account has no e-mail address"),
                     _("The identity provider did not tell this site your e-mail address."),
                     admin),
        "email_ambiguous": (403, _("More than one account uses this e-mail address"),
                            _("This site cannot tell which account is yours."),
                            _("Ask an administrator: only one account may use an e-mail "
                              "address.")),
        "inactive": (403, _("This account is disabled"),
                     _("Your account on this site has been turned off."),
                     _("Ask an administrator if you think this is a mistake.")),
        "unreachable": (503, _("The identity provider could not be reached"),
                        _("This site could not talk to the identity provider just now."),
                        _("Try again in a moment.")),
    }
    return texts.get(reason, (403, _("Single sign-on is not set up correctly"),
                              _("The identity provider did not accept this site's request."),
                              admin))


def refusal(request: HttpRequest, reason: str, details: dict[str, Any] | None = None
            ) -> HttpResponse:
    status, title, lead, advice = _texts(reason)
    log.warning("sso sign-in refused: %s", reason)
    sso_refused.send(sender=OIDCBackend, request=request, reason=reason,
                     details=dict(details or {}))
    ways = [{"url": reverse("login"), "label": _("Back to sign-in")}]
    return error_pages._page(request, status, f"sso_{reason}", title, lead, advice, ways)


class LoginStart(OIDCAuthenticationRequestView):  # type: ignore[misc]
    """Off to the provider's authorization endpoint (found by discovery)."""

    def __init__(self, **kwargs: Any) -> None:
        View.__init__(self, **kwargs)  # the library's reads endpoints from settings

    def get(self, request: HttpRequest) -> HttpResponse:
        if not settings.OIDC_ENABLED:
            raise Http404
        try:
            op = discovery.provider()
        except discovery.DiscoveryError as exc:
            return refusal(request, exc.kind)
        self.OIDC_OP_AUTH_ENDPOINT = op.authorization_endpoint
        self.OIDC_RP_CLIENT_ID = settings.OIDC_CLIENT_ID
        response: HttpResponse = super().get(request)
        return response


@require_GET
def callback(request: HttpRequest) -> HttpResponse:
    if not settings.OIDC_ENABLED:
        raise Http404
    states = request.session.get("oidc_states")
    state = request.GET.get("state", "")
    entry = states.pop(state, None) if isinstance(states, dict) and state else None
    if entry is not None:
        request.session["oidc_states"] = states  # used once, whatever happens next
        request.session.save()
    if request.GET.get("error"):
        return refusal(request, "provider_error",
                       {"error": request.GET.get("error", "")[:60]})
    code = request.GET.get("code", "")
    if (not code or not isinstance(entry, dict) or not entry.get("nonce")
            or time.time() - float(entry.get("added_on") or 0) > STATE_MAX_AGE_SECONDS):
        return refusal(request, "state_mismatch")
    backend = OIDCBackend()
    try:
        signed = backend.sign_in(
            request, code=code, nonce=str(entry["nonce"]),
            code_verifier=entry.get("code_verifier"),
            redirect_uri=request.build_absolute_uri(reverse("oidc_callback")))
    except Refused as exc:
        return refusal(request, exc.reason, exc.details)
    next_url = request.session.pop("oidc_login_next", None)
    login(request, signed.user, backend=BACKEND)
    sso_signed_in.send(sender=OIDCBackend, request=request, user=signed.user,
                       details=signed.details())
    return HttpResponseRedirect(next_url or resolve_url(settings.LOGIN_REDIRECT_URL))
