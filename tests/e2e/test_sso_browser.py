"""Single sign-on in headless Chromium: a real daphne process set up with OIDC_* as an
administrator would, a real OpenID Connect provider process, real redirects between them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from chatsite.models import ExternalIdentity
from conversations.models import AuditEvent
from tests.conftest import ARTIFACTS, ServerProcess, child_env, screenshot
from tests.e2e.test_accessibility import (  # noqa: F401 (axe_path: the fixture, by name)
    AXE,
    RUN_AXE,
    axe_path,
)
from tests.oidc_provider.fixtures import oidc_provider, oidc_provider_process
from tests.oidc_provider.process import PASSWORD as IDP_PASSWORD
from tests.oidc_provider.process import ProviderProcess

__all__ = ["oidc_provider", "oidc_provider_process"]

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
User = get_user_model()


@pytest.fixture(scope="module")
def sso_app(oidc_provider_process: ProviderProcess, django_db_setup: Any,
            django_db_blocker: Any) -> Iterator[ServerProcess]:
    with django_db_blocker.unblock():
        env = child_env(**oidc_provider_process.env(
            OIDC_BUTTON_LABEL="Sign in with Corp ID", OIDC_TEAMS_CLAIM="groups",
            OIDC_TEAM_MAP="eng=Engineering", OIDC_ALLOWED_DOMAINS="corp.example,example.com"))
    server = ServerProcess(env, ARTIFACTS / "logs" / "daphne-sso.log")
    yield server
    server.stop()


@pytest.fixture
def site(sso_app: ServerProcess, oidc_provider: ProviderProcess, admin_user: Any) -> Any:
    """The site (its first administrator exists) and the provider, switches off."""
    return sso_app


def through_provider(page: Any, base: str, provider: ProviderProcess, username: str) -> None:
    page.goto(base + "/accounts/login/")
    page.click("#sso-login")
    page.wait_for_url(provider.issuer + "/authorize?**")
    page.fill("#idp-username", username)
    page.fill("#idp-password", IDP_PASSWORD)
    page.click("#idp-submit")


def test_a_person_signs_in_through_the_provider_and_lands_in_their_team(
        site: Any, oidc_provider: ProviderProcess, page: Any) -> None:
    engineering = Group.objects.create(name="Engineering")
    page.goto(site.url + "/accounts/login/")
    assert page.locator("#sso-login").inner_text() == "Sign in with Corp ID"
    screenshot(page, "sso-login-desktop")
    through_provider(page, site.url, oidc_provider, "dana")
    page.wait_for_url(site.url + "/")
    assert "New chat" in page.content()
    dana = User.objects.get(username="dana")
    assert list(dana.groups.all()) == [engineering]
    assert ExternalIdentity.objects.filter(user=dana, issuer=oidc_provider.issuer).exists()
    assert AuditEvent.objects.filter(action="sso.signed_in", actor=dana).exists()
    assert page.console_errors == []


@pytest.mark.parametrize(("fault", "username", "status", "title"), [
    ("wrong_issuer", "dana", 403, "Single sign-on failed"),
    ("bad_signature", "dana", 403, "Single sign-on failed"),
    ("wrong_nonce", "dana", 403, "Single sign-on failed"),
    ("expired_code", "dana", 400, "This sign-in has expired"),
    ("", "erin", 403, "This e-mail domain may not sign in here"),
])
def test_a_refused_sign_in_is_a_clear_page_and_nobody_is_signed_in(
        site: Any, oidc_provider: ProviderProcess, page: Any, fault: str, username: str,
        status: int, title: str) -> None:
    if fault:
        oidc_provider.fault(**{fault: True})
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if "/sso/callback/" in r.url
            else None)
    through_provider(page, site.url, oidc_provider, username)
    page.wait_for_url(site.url + "/accounts/sso/callback/**")
    assert page.locator("h1").inner_text() == title
    assert statuses == [status]
    assert page.locator(".error-card a", has_text="Back to sign-in").is_visible()
    if fault == "wrong_issuer":
        screenshot(page, "sso-refused-desktop")
    page.goto(site.url + "/")
    assert "/accounts/login/" in page.url  # not signed in
    assert not User.objects.filter(username=username).exists()
    assert AuditEvent.objects.filter(action="sso.refused").exists()


def test_an_answer_replayed_in_another_browser_is_refused(
        site: Any, oidc_provider: ProviderProcess, browser: Any, page: Any) -> None:
    callbacks: list[str] = []

    def keep_the_answer(route: Any) -> None:
        """The provider's redirect back to us is caught here and never followed."""
        if route.request.method != "POST":
            route.continue_()
            return
        answer = route.fetch(max_redirects=0)
        callbacks.append(answer.headers["location"])
        route.abort()

    page.route(oidc_provider.issuer + "/authorize", keep_the_answer)
    through_provider(page, site.url, oidc_provider, "dana")
    deadline = 50
    while not callbacks and deadline:
        page.wait_for_timeout(100)
        deadline -= 1
    assert callbacks and "/accounts/sso/callback/?code=" in callbacks[0]
    other = browser.new_context()
    try:
        intruder = other.new_page()
        response = intruder.goto(callbacks[0])
        assert response.status == 400
        assert intruder.locator("h1").inner_text() == "This sign-in could not be finished"
    finally:
        other.close()
    assert not User.objects.filter(username="dana").exists()


def test_the_sign_in_page_with_single_sign_on_on_a_phone_in_chinese(
        site: Any, oidc_provider: ProviderProcess, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, locale="zh-CN")
    try:
        page = context.new_page()
        page.goto(site.url + "/accounts/login/")
        button = page.locator("#sso-login")
        box = button.bounding_box()
        assert box is not None and box["width"] <= 390 and box["x"] >= 0
        screenshot(page, "sso-login-phone")
        oidc_provider.fault(wrong_issuer=True)
        button.click()
        page.fill("#idp-username", "dana")
        page.fill("#idp-password", IDP_PASSWORD)
        page.click("#idp-submit")
        page.wait_for_url(site.url + "/accounts/sso/callback/**")
        assert page.locator("h1").inner_text() == "单点登录失败"
        screenshot(page, "sso-refused-phone-zh")
    finally:
        context.close()


@pytest.mark.usefixtures("axe_path")  # fails, not skips, without axe-core in CI
def test_the_sign_on_pages_pass_axe(site: Any, oidc_provider: ProviderProcess,
                                    browser: Any) -> None:
    oidc_provider.fault(wrong_issuer=True)
    found: dict[str, Any] = {}
    for name, viewport in {"desktop": (1280, 800), "phone": (390, 844)}.items():
        for locale in ("en-US", "zh-CN"):
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                          locale=locale, bypass_csp=True)
            try:
                page = context.new_page()
                page.goto(site.url + "/accounts/login/")
                page.add_script_tag(path=str(AXE))
                found[f"login {name} {locale}"] = page.evaluate(RUN_AXE)
                through_provider(page, site.url, oidc_provider, "dana")
                page.wait_for_url(site.url + "/accounts/sso/callback/**")
                page.add_script_tag(path=str(AXE))
                found[f"refusal {name} {locale}"] = page.evaluate(RUN_AXE)
            finally:
                context.close()
    assert {key: value for key, value in found.items() if value} == {}
