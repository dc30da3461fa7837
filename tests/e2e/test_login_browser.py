"""A new user's first minutes, in headless Chromium against a real daphne process."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ARTIFACTS, PASSWORD, ServerProcess, child_env, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def fresh_app() -> Any:
    """Its own server process: the shared one remembers that users existed earlier."""
    server = ServerProcess(child_env(), ARTIFACTS / "logs" / "daphne-fresh-site.log")
    yield server
    server.stop()


def test_a_new_site_offers_the_first_admin_form_then_signs_in(fresh_app: Any, page: Any) -> None:
    live_app = fresh_app
    page.goto(live_app.url + "/")
    assert page.url.endswith("/setup/")
    screenshot(page, "setup-first-admin")
    page.fill("#id_username", "founder")
    page.fill("#id_email", "founder@example.com")
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(live_app.url + "/")
    assert "New chat" in page.content()

    page.click(".user-menu summary")
    page.click("text=Sign out")
    page.wait_for_url("**/accounts/login/**")

    page.fill("#id_username", "founder")
    page.fill("#id_password", "wrong-password")
    page.click("button[type=submit]")
    assert page.locator(".form-error").is_visible()

    page.fill("#id_username", "founder")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(live_app.url + "/")
    screenshot(page, "signed-in-home")
    assert page.console_errors == []


def test_the_login_page_works_on_a_phone_in_dark_mode(live_app: Any, browser: Any,
                                                        owner: Any) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844},
                                  color_scheme="dark", is_mobile=True)
    page = context.new_page()
    try:
        page.goto(live_app.url + "/accounts/login/")
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(15, 16, 19)"
        screenshot(page, "login-phone-dark")
        page.fill("#id_username", "alice")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(live_app.url + "/")
    finally:
        context.close()


def test_the_language_switch_translates_the_page(live_app: Any, page: Any, owner: Any) -> None:
    page.goto(live_app.url + "/accounts/login/")
    page.select_option("#language-select", "zh-hans")
    page.wait_for_load_state("networkidle")
    assert "登录" in page.content()
    screenshot(page, "login-zh-hans")
