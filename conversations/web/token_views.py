"""The profile page for API tokens: list, create (the token is shown once), revoke."""

from __future__ import annotations

import time

from django import forms
from django.conf import settings
from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_http_methods, require_POST

from conversations.api import tokens
from conversations.models import ApiToken


class TokenForm(forms.Form):
    name = forms.CharField(
        label=gettext_lazy("Name"), max_length=tokens.NAME_MAX_LENGTH,
        help_text=gettext_lazy("What will use it, e.g. “nightly report script”."),
        widget=forms.TextInput(attrs={"autocomplete": "off"}))


SESSION_KEY = "api_token_created"
SHOW_SECONDS = 300


@login_required
@require_http_methods(["GET", "POST"])
@sensitive_variables("created", "shown")
def token_list(request: HttpRequest) -> HttpResponse:
    """GET lists the tokens; POST creates one and redirects (POST-redirect-GET).

    The new token's plaintext crosses the redirect in the session and is taken out of it by
    the next GET: it is shown once, and reloading that page neither shows it again nor makes
    a second token.
    """
    form = TokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            created = tokens.create_token(request.user, form.cleaned_data["name"],
                                          request=request)
        except tokens.TokenRefused as exc:
            form.add_error("name", str(exc))
        else:
            request.session[SESSION_KEY] = {"name": created.token.name,
                                            "secret": created.secret, "at": time.time()}
            return redirect("api_tokens")
    shown = request.session.pop(SESSION_KEY, None) if request.method == "GET" else None
    # Shown on the page the redirect leads to, not on a visit long after (never shown twice).
    fresh = isinstance(shown, dict) and time.time() - float(shown.get("at", 0)) < SHOW_SECONDS
    new_token = ({"token": {"name": shown.get("name", "")}, "secret": shown.get("secret", "")}
                 if fresh and isinstance(shown, dict) else None)
    response = render(request, "account/tokens.html", {
        "form": form,
        "new_token": new_token,
        "tokens": tokens.tokens_of(request.user),
        "api_base": f"{settings.SITE_URL.rstrip('/')}/v1",
        "max_tokens": tokens.MAX_ACTIVE_TOKENS,
    }, status=400 if form.errors else 200)
    # The page may hold the token: no browser or proxy may keep a copy.
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    user = request.user
    assert user.is_authenticated  # login_required
    # Someone else's token is "not found", like every object a user may not touch.
    token = ApiToken.objects.filter(pk=token_id, user=user).first()
    if token is None:
        raise Http404
    if tokens.revoke(token, actor=request.user, request=request):
        flash.success(request, _("Token “%(name)s” (%(prefix)s…) is revoked; it no longer "
                                 "works.") % {"name": token.name, "prefix": token.prefix})
    return redirect("api_tokens")
