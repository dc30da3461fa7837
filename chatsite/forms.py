from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.forms import UserCreationForm
from django.utils.translation import gettext_lazy as _


class FirstAdminForm(forms.Form):
    username = forms.CharField(label=_("Username"), max_length=150)
    email = forms.EmailField(label=_("Email"), required=False)
    password1 = forms.CharField(label=_("Password"), widget=forms.PasswordInput,
                                strip=False)
    password2 = forms.CharField(label=_("Password again"), widget=forms.PasswordInput,
                                strip=False)

    def clean_username(self) -> str:
        username: str = self.cleaned_data["username"]
        get_user_model().username_validator(username)
        return username

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        p1, p2 = data.get("password1"), data.get("password2")
        if p1 and p2 and p1 != p2:
            self.add_error("password2", _("The two passwords differ."))
        elif p1:
            user = get_user_model()(username=data.get("username", ""),
                                    email=data.get("email") or "")
            try:
                password_validation.validate_password(p1, user)
            except forms.ValidationError as exc:
                self.add_error("password1", exc)
        return data


class SignupForm(UserCreationForm):
    """Self sign-up: only username and password; no role fields exist to tamper with."""

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username",)
