"""The management pages in Chromium against a real daphne process: a provider's failure shows on
the providers page after one answer and "Test connection" brings it back; a model renamed and
moved on the models page is what the chat's switcher shows; both pages on a phone."""

from __future__ import annotations

from typing import Any

import pytest

from conversations.models import Message, MessageStatus
from providers.models import Provider
from tests.conftest import PASSWORD, screenshot
from tests.e2e.browser import sign_in, start_chat, wait_status
from tests.e2e.test_accessibility import (  # noqa: F401 (axe_path: the fixture, by name)
    AXE,
    RUN_AXE,
    axe_path,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}


def _sign_in_as_root(page: Any, base: str) -> None:
    page.goto(base + "/accounts/login/")
    page.fill("#id_username", "root")
    page.fill("#id_password", PASSWORD)
    page.locator("main button[type=submit]").click()
    page.wait_for_url(base + "/")


def _card(page: Any, kind: str) -> Any:
    return page.locator(f"#provider-{kind}")


def test_a_failing_answer_shows_on_the_providers_page_and_a_test_brings_it_back(
        live_app: Any, emulated: Any, browser: Any, owner: Any, admin_user: Any) -> None:
    base = live_app.url
    # A member's answer fails at the provider ...
    member_context = browser.new_context()
    member = member_context.new_page()
    sign_in(member, base)
    start_chat(member, "[[emu:500-before]] Tell me about llamas", model="llama-3-70b")
    wait_status(member, "failed")
    member_context.close()
    assert Message.objects.filter(status=MessageStatus.FAILED).count() == 1

    # ... and the admin sees it on the providers page at once.
    admin_context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = admin_context.new_page()
    _sign_in_as_root(page, base)
    page.locator(".user-menu summary").click()
    page.get_by_role("link", name="Providers").click()
    page.wait_for_url(base + "/manage/providers/")
    card = _card(page, "qianfan")
    assert card.get_attribute("data-status") == "failing"
    assert "unavailable" in card.inner_text()
    assert "Failing since" in card.inner_text()
    assert _card(page, "cloudflare").get_attribute("data-status") == "untested"
    screenshot(page, "manage-providers-failing")

    # The provider is back (the emulator has no more faults): one test says so.
    card.get_by_role("button", name="Test connection").click()
    page.wait_for_url(f"{base}/manage/providers/#provider-qianfan")
    assert _card(page, "qianfan").get_attribute("data-status") == "ok"
    assert "connection works" in page.locator(".flash-stack").inner_text()
    assert Provider.objects.get(kind="qianfan").failing_since is None
    admin_context.close()


def test_a_renamed_and_moved_model_is_what_the_switcher_shows(
        live_app: Any, emulated: Any, page: Any, owner: Any, admin_user: Any,
        browser: Any) -> None:
    base = live_app.url
    _sign_in_as_root(page, base)
    page.goto(base + "/manage/models/")
    row = page.locator("#model-llama-3-70b")
    row.get_by_role("link", name="Edit").click()
    page.fill("#id_display_name", "Big Llama")
    page.get_by_role("button", name="Save").click()
    page.wait_for_url(f"{base}/manage/models/#model-llama-3-70b")
    for _step in range(3):  # to the top of the list
        page.locator("#model-llama-3-70b").get_by_role("button", name="Move Big Llama up").click()
        page.wait_for_url(f"{base}/manage/models/#model-llama-3-70b")
    assert page.locator(".model-row").first.get_attribute("data-model") == "llama-3-70b"
    screenshot(page, "manage-models")

    member_context = browser.new_context()
    member = member_context.new_page()
    sign_in(member, base)
    options = member.locator("#id_model option")
    assert options.first.get_attribute("value") == "llama-3-70b"
    assert options.first.inner_text().startswith("Big Llama")
    member_context.close()


def test_both_pages_fit_a_phone(live_app: Any, emulated: Any, browser: Any,
                                admin_user: Any) -> None:
    context = browser.new_context(**PHONE)
    page = context.new_page()
    _sign_in_as_root(page, live_app.url)
    for path, name in (("/manage/providers/", "manage-providers-phone"),
                       ("/manage/models/", "manage-models-phone")):
        page.goto(live_app.url + path)
        width = page.evaluate("document.scrollingElement.scrollWidth")
        assert width <= 390, f"{path} scrolls sideways ({width}px)"
        button = page.locator("[data-test-connection], .model-row .btn").first
        box = button.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
        screenshot(page, name)
    context.close()


@pytest.mark.usefixtures("axe_path")  # fails, not skips, without axe-core in CI
def test_the_management_pages_have_no_serious_accessibility_violation(
        live_app: Any, emulated: Any, browser: Any, admin_user: Any) -> None:
    """axe-core (package.json) on each page, desktop and phone, light and dark, both languages."""
    Provider.objects.filter(kind="qianfan").update(  # a failing card has the most to check
        last_status=Provider.Status.ERROR, last_error_kind="auth", last_error="401: refused")
    pages = ["/manage/providers/", "/manage/providers/qianfan/", "/manage/models/",
             "/manage/models/llama-3.2-3b/"]
    found: dict[str, Any] = {}
    for device, options in (("desktop", {"viewport": {"width": 1280, "height": 800}}),
                            ("phone", PHONE)):
        for scheme in ("light", "dark"):
            for language in ("en", "zh-hans"):
                context = browser.new_context(color_scheme=scheme, bypass_csp=True, **options)
                context.add_cookies([{"name": "django_language", "value": language,
                                      "url": live_app.url}])
                page = context.new_page()
                _sign_in_as_root(page, live_app.url)
                for path in pages:
                    page.goto(live_app.url + path)
                    page.add_script_tag(path=str(AXE))
                    violations = page.evaluate(RUN_AXE)
                    if violations:
                        found[f"{path} {device} {scheme} {language}"] = violations
                context.close()
    assert not found, found
