from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.debug import sensitive_post_parameters

from chatsite import bootstrap
from chatsite.forms import FirstAdminForm, SignupForm


@sensitive_post_parameters("password1", "password2")
def first_admin(request: HttpRequest) -> HttpResponse:
    if not bootstrap.needs_first_admin():
        return redirect("login")
    form = FirstAdminForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = bootstrap.create_first_admin(
                form.cleaned_data["username"],
                form.cleaned_data["email"],
                form.cleaned_data["password1"],
            )
        except bootstrap.AlreadyBootstrapped:
            messages.error(request, _("An administrator already exists. Please sign in."))
            return redirect("login")
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, _("Welcome! You are the administrator of this site."))
        return redirect("home")
    return render(request, "setup/first_admin.html", {"form": form})


@sensitive_post_parameters("password1", "password2")
def signup(request: HttpRequest) -> HttpResponse:
    if not settings.ALLOW_SIGNUP:
        raise Http404
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form})
