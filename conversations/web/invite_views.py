"""/invite/<token>/: the page an invitation link opens.

Signed out: choose a username and password and join (the e-mail of a bound link is fixed), or
sign in (with single sign-on when it is configured) and come back. Signed in: one "Join" button.
A link that was used, revoked or has expired gets a page that says so (410); an unknown one 404.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages as flash
from django.contrib.auth import get_user_model, login, password_validation
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_http_methods

from conversations.models import Invitation
from conversations.teams import invitations
from conversations.teams.services import TeamRefused

User = get_user_model()


class InviteSignupForm(forms.Form):
    """A new account from an invitation: no role fields exist to tamper with (T17)."""

    username = forms.CharField(label=gettext_lazy("Username"), max_length=150,
                               widget=forms.TextInput(attrs={"autocomplete": "username"}))
    email = forms.EmailField(label=gettext_lazy("E-mail"), required=False,
                             widget=forms.EmailInput(attrs={"autocomplete": "email"}))
    password1 = forms.CharField(label=gettext_lazy("Password"), strip=False,
                                widget=forms.PasswordInput(attrs={"autocomplete":
                                                                  "new-password"}))
    password2 = forms.CharField(label=gettext_lazy("Password again"), strip=False,
                                widget=forms.PasswordInput(attrs={"autocomplete":
                                                                  "new-password"}))

    def __init__(self, *args: Any, invitation: Invitation, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.invitation = invitation
        if invitation.email:
            field = self.fields["email"]
            field.disabled = True  # the posted value is ignored: the link's address is used
            field.initial = invitation.email
            field.help_text = _("This invitation is for this address.")

    def clean_username(self) -> str:
        username: str = self.cleaned_data["username"].strip()
        User.username_validator(username)
        if User.objects.filter(username__iexact=username).exists():
            raise forms.ValidationError(_("This username is taken; choose another."))
        return username

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        email = self.invitation.email or data.get("email") or ""
        if email and User.objects.filter(email__iexact=email).exists():
            # One account per address: adding people by e-mail and single sign-on match on it.
            self.add_error(None, _("An account with this e-mail address exists already: sign "
                                   "in with it, then open this link again."))
        p1, p2 = data.get("password1"), data.get("password2")
        if p1 and p2 and p1 != p2:
            self.add_error("password2", _("The two passwords differ."))
        elif p1:
            user = User(username=data.get("username", ""),
                        email=self.invitation.email or data.get("email") or "")
            try:
                password_validation.validate_password(p1, user)
            except forms.ValidationError as exc:
                self.add_error("password1", exc)
        return data


def _gone(request: HttpRequest, reason: str) -> HttpResponse:
    titles = {
        "used": _("This invitation was already used"),
        "revoked": _("This invitation was withdrawn"),
        "expired": _("This invitation has expired"),
        "unknown": _("This invitation link does not work"),
    }
    leads = {
        "used": _("Each invitation link works once, and this one has been used."),
        "revoked": _("The person who made it revoked it."),
        "expired": _("Invitation links work for a limited time, and this one ran out."),
        "unknown": _("It was copied incompletely or never existed."),
    }
    status = 404 if reason == "unknown" else 410
    ways = ([{"url": reverse("home"), "label": _("Back to your conversations")}]
            if request.user.is_authenticated
            else [{"url": reverse("login"), "label": _("Sign in")}])
    return render(request, "error.html", {
        "status": status, "title": titles[reason], "lead": leads[reason],
        "advice": _("Ask the person who invited you for a new link."), "ways": ways,
    }, status=status)


def _wrong_account(request: HttpRequest) -> HttpResponse:
    return render(request, "error.html", {
        "status": 403, "title": _("This invitation is for another e-mail address"),
        "lead": _("You are signed in with an account whose e-mail address is not the one "
                  "this invitation was made for. Nothing was changed."),
        "advice": _("Sign out and open the link again, or ask for an invitation for your "
                    "address."),
        "ways": [{"url": reverse("home"), "label": _("Back to your conversations")}],
    }, status=403)


def _joined(request: HttpRequest, invitation: Invitation) -> HttpResponse:
    team = invitation.team
    if team is None:
        flash.success(request, _("Welcome! Your account is ready."))
        return redirect("home")
    flash.success(request, _("You joined %(team)s.") % {"team": team.name})
    return redirect("team", team.pk)


@sensitive_post_parameters("password1", "password2")
@sensitive_variables("token")
@require_http_methods(["GET", "POST"])
def invite_page(request: HttpRequest, token: str) -> HttpResponse:
    invitation = invitations.find(token)
    if invitation is None:
        return _gone(request, "unknown")
    reason = invitations.state(invitation)
    if reason != "valid":
        return _gone(request, reason)
    user = request.user
    here = reverse("invite", args=[token])
    oidc_enabled = bool(getattr(settings, "OIDC_ENABLED", False))
    context: dict[str, Any] = {"invitation": invitation, "here": here,
                               "oidc_enabled": oidc_enabled,
                               "login_url": f"{reverse('login')}?{urlencode({'next': here})}"}
    if user.is_authenticated:
        if not invitations.email_matches(invitation, user):
            return _wrong_account(request)
        already = invitations.already_in(invitation, user)
        if request.method == "POST" and not already:
            try:
                invitations.accept(invitation, user, request=request)
            except invitations.InvitationGone as exc:
                return _gone(request, exc.reason)
            except invitations.WrongAccount:
                return _wrong_account(request)
            return _joined(request, invitation)
        context["already"] = already
        return render(request, "teams/invite.html", context)
    # Signed out. With single sign-on as the only way in, no local password account is made.
    password_allowed = not getattr(settings, "OIDC_ONLY", False)
    form = InviteSignupForm(request.POST if request.method == "POST" and password_allowed
                            else None, invitation=invitation)
    if request.method == "POST" and password_allowed and form.is_valid():
        try:
            new_user = invitations.accept_as_new(
                invitation, username=form.cleaned_data["username"],
                email=form.cleaned_data.get("email") or "",
                password=form.cleaned_data["password1"], request=request)
        except invitations.InvitationGone as exc:
            return _gone(request, exc.reason)
        except TeamRefused as exc:
            form.add_error("username", exc.message)
        else:
            login(request, new_user, backend="django.contrib.auth.backends.ModelBackend")
            return _joined(request, invitation)
    context.update({"form": form, "password_allowed": password_allowed})
    response = render(request, "teams/invite.html", context,
                      status=400 if form.errors else 200)
    response["Cache-Control"] = "no-store"
    return response
