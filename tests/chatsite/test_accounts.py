"""Sign in, sign out, change password, and the self sign-up switch."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from tests.conftest import PASSWORD


@pytest.mark.django_db
def test_it_signs_in_with_the_right_password_and_out_again(client: Client, owner: Any) -> None:
    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/")["Location"].startswith("/accounts/login/")


@pytest.mark.django_db
def test_it_gives_the_same_answer_for_unknown_users_and_wrong_passwords(
    client: Client, owner: Any
) -> None:
    wrong = client.post("/accounts/login/", {"username": "alice", "password": "nope-nope"})
    unknown = client.post("/accounts/login/", {"username": "nobody", "password": "nope-nope"})
    assert wrong.status_code == unknown.status_code == 200
    assert wrong.context["form"].errors == unknown.context["form"].errors


@pytest.mark.django_db
def test_logout_by_get_is_refused(client: Client, owner: Any) -> None:
    client.force_login(owner)
    assert client.get("/accounts/logout/").status_code == 405
    assert client.get("/").status_code == 200


@pytest.mark.django_db
def test_it_changes_the_password(client: Client, owner: Any) -> None:
    client.force_login(owner)
    response = client.post("/accounts/password/", {
        "old_password": PASSWORD, "new_password1": "a-much-newer-pass-42",
        "new_password2": "a-much-newer-pass-42"})
    assert response["Location"] == "/accounts/password/done/"
    owner.refresh_from_db()
    assert owner.check_password("a-much-newer-pass-42")


@pytest.mark.django_db
def test_signup_is_off_by_default(client: Client, owner: Any) -> None:
    assert client.get("/accounts/signup/").status_code == 404
    client.post("/accounts/signup/", {"username": "eve", "password1": "x-Long-pass-99",
                                      "password2": "x-Long-pass-99"})
    assert not owner.__class__.objects.filter(username="eve").exists()


@pytest.mark.django_db
def test_signup_when_enabled_creates_an_ordinary_user_whatever_is_posted(
    client: Client, owner: Any, settings: Any
) -> None:
    settings.ALLOW_SIGNUP = True
    response = client.post("/accounts/signup/", {
        "username": "eve", "password1": "x-Long-pass-99", "password2": "x-Long-pass-99",
        "is_staff": "on", "is_superuser": "on", "groups": "1"})
    assert response.status_code == 302
    eve = owner.__class__.objects.get(username="eve")
    assert not eve.is_staff and not eve.is_superuser and not eve.groups.exists()


@pytest.mark.django_db
def test_pages_carry_security_headers(client: Client, owner: Any) -> None:
    response = client.get("/accounts/login/")
    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"


@pytest.mark.django_db
def test_the_language_choice_is_remembered(client: Client, owner: Any) -> None:
    client.force_login(owner)
    client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})
    assert "退出登录" in client.get("/").content.decode()
    client.post("/i18n/setlang/", {"language": "en", "next": "/"})
    assert "Sign out" in client.get("/").content.decode()
