"""The page layout as a person sees it: banners never push the composer off-screen, and the
sidebar runs the full height of the window, on a desktop and on a phone.

The banners are made the way a user meets them: the welcome after creating the first
administrator, a budget warning after sending with a budget nearly used up, "share link
created" after making a share link. The requests that queue them do not follow their redirect,
so all of them are still waiting when the conversation page opens. This module runs its own
server process: the welcome is shown once per process (its bootstrap check is cached).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from conversations.models import Budget, Conversation, Message, MessageStatus, UsageRecord
from tests.conftest import ARTIFACTS, PASSWORD, ServerProcess, child_env, screenshot
from tests.e2e.browser import sign_in
from tests.support import model

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
LONG_ANSWER = "\n\n".join(
    f"Paragraph {n}: llamas are social animals and live in herds. " * 3 for n in range(6))


@pytest.fixture(scope="module")
def fresh_app(django_db_setup: Any, django_db_blocker: Any) -> Iterator[ServerProcess]:
    with django_db_blocker.unblock():
        env = child_env()
    server = ServerProcess(env, ARTIFACTS / "logs" / "daphne-layout.log")
    yield server
    server.stop()


def _csrf(page: Any) -> str:
    return next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")


def _post(page: Any, url: str, data: dict[str, str]) -> None:
    """A form post that queues a flash message without showing the page that would use it."""
    response = page.request.post(url, form={"csrfmiddlewaretoken": _csrf(page), **data},
                                 max_redirects=0)
    assert response.status == 302, (url, response.status, response.text()[:300])


def _long_conversation(user: Any, turns: int = 25) -> Conversation:
    llama = model("llama-3.2-3b")
    conversation = Conversation.objects.create(owner=user, model=llama, title="A long talk")
    parent = None
    seq = 1
    for n in range(turns):
        prompt = Message.objects.create(
            conversation=conversation, parent=parent, seq=seq, role=Message.Role.USER,
            author=user, client_id=uuid.uuid4(), content=f"Question {n} about llamas?",
            status=MessageStatus.COMPLETE)
        parent = Message.objects.create(
            conversation=conversation, parent=prompt, seq=seq + 1,
            role=Message.Role.ASSISTANT, model=llama, content=LONG_ANSWER,
            status=MessageStatus.COMPLETE, finish_reason="stop")
        seq += 2
    conversation.active_leaf = parent
    conversation.next_seq = seq
    conversation.save()
    return conversation


def _in_viewport(page: Any, selector: str) -> None:
    box = page.locator(selector).bounding_box()
    size = page.viewport_size
    assert box is not None, f"{selector} is not rendered"
    assert box["y"] >= 0 and box["y"] + box["height"] <= size["height"] + 0.5, (
        f"{selector} at y={box['y']:.0f}..{box['y'] + box['height']:.0f} is outside the "
        f"{size['width']}x{size['height']} viewport")
    assert box["x"] >= 0 and box["x"] + box["width"] <= size["width"] + 0.5, (selector, box)


def _sidebar_reaches_the_bottom(page: Any) -> None:
    box = page.locator("#sidebar").bounding_box()
    height = page.viewport_size["height"]
    assert box is not None
    assert box["y"] + box["height"] >= height - 0.5, (
        f"the sidebar stops at {box['y'] + box['height']:.0f}px of {height}px")


def _open_drawer(page: Any) -> None:
    page.locator(".pane-head .drawer-toggle").click()
    page.wait_for_timeout(350)  # the slide-in transition


def test_banners_never_push_the_composer_off_screen(fresh_app: Any, emulated: Any,
                                                     browser: Any) -> None:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    base = fresh_app.url
    # The welcome banner: the first administrator is created through the setup page.
    page.goto(base + "/setup/")
    _post(page, base + "/setup/", {"username": "root", "email": "root@example.com",
                                   "password1": PASSWORD, "password2": PASSWORD})
    admin = get_user_model().objects.get(username="root")
    conversation = _long_conversation(admin)
    # The budget warning: a budget 90% used, then a message sent from the plain form.
    Budget.objects.create(user=admin, max_tokens=1000, warn_percent=80)
    UsageRecord.objects.create(user=admin, model=conversation.model, status="complete",
                               prompt_tokens=400, completion_tokens=500)
    _post(page, f"{base}/c/{conversation.pk}/messages/",
          {"text": "One more [[emu:tokens n=3]]", "client_id": str(uuid.uuid4())})
    # "Share link created": a share made from the settings page.
    _post(page, f"{base}/c/{conversation.pk}/share/", {"live": "1"})

    page.goto(f"{base}/c/{conversation.pk}/")
    flashes = page.locator(".flash").all_inner_texts()
    assert len(flashes) == 3, flashes
    assert any("Welcome" in text for text in flashes)
    assert any("budget" in text for text in flashes)
    assert any("Share link created" in text for text in flashes)
    page.wait_for_selector('.msg-assistant:last-of-type[data-status="complete"]')
    screenshot(page, "layout-banners-desktop")
    _in_viewport(page, "#composer [data-send]")
    _in_viewport(page, "#composer-text")
    _sidebar_reaches_the_bottom(page)

    page.set_viewport_size(PHONE)
    page.wait_for_timeout(100)
    screenshot(page, "layout-banners-phone")
    _in_viewport(page, "#composer [data-send]")
    _in_viewport(page, "#composer-text")
    _open_drawer(page)
    _sidebar_reaches_the_bottom(page)
    # Banners can be dismissed; the thread gets their room back.
    page.keyboard.press("Escape")
    before = page.locator("#messages").bounding_box()["height"]
    for _ in range(3):
        page.locator(".flash-dismiss").first.click()
    assert page.locator(".flash-stack").count() == 0
    assert page.locator("#messages").bounding_box()["height"] > before
    _in_viewport(page, "#composer [data-send]")
    context.close()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_long_pages_scroll_inside_and_the_sidebar_spans_the_window(
        fresh_app: Any, emulated: Any, browser: Any, viewport: dict[str, int]) -> None:
    """A settings page with many share links and a flash message: the page can be read to its
    end, and the sidebar runs to the bottom of the window wherever the reader scrolled."""
    user = get_user_model().objects.create_user("alice", "alice@example.com", PASSWORD)
    conversation = _long_conversation(user, turns=2)
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    base = fresh_app.url
    sign_in(page, base)
    for _ in range(12):
        _post(page, f"{base}/c/{conversation.pk}/share/", {"anonymous": "1"})
    page.goto(f"{base}/c/{conversation.pk}/settings/")
    assert page.locator(".flash").count() == 12
    last = page.locator(".share-list li").last
    last.scroll_into_view_if_needed()
    _in_viewport(page, ".share-list li >> nth=-1")
    if viewport is PHONE:
        _open_drawer(page)
    _sidebar_reaches_the_bottom(page)
    screenshot(page, f"layout-long-settings-{'phone' if viewport is PHONE else 'desktop'}")
    context.close()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_the_new_chat_composer_stays_in_view_under_banners(
        fresh_app: Any, emulated: Any, browser: Any, viewport: dict[str, int]) -> None:
    user = get_user_model().objects.create_user("alice", "alice@example.com", PASSWORD)
    conversation = _long_conversation(user, turns=1)
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    base = fresh_app.url
    sign_in(page, base)
    for _ in range(4):
        _post(page, f"{base}/c/{conversation.pk}/share/", {})
    page.goto(base + "/")
    assert page.locator(".flash").count() == 4
    page.locator("details.params summary, details.system-prompt summary").first.click()
    _in_viewport(page, "#new-chat-form [data-send]")
    _in_viewport(page, "#id_text")
    context.close()




def _tabbable_in_sidebar(page: Any) -> bool:
    """Tab through the page once: does focus ever land inside the sidebar?"""
    page.locator("#composer-text").focus()
    for _ in range(25):
        page.keyboard.press("Tab")
        if page.evaluate("!!document.activeElement.closest('#sidebar')"):
            return True
    return False


def test_the_phone_drawer_reports_its_state_takes_focus_and_closes_with_esc(
        fresh_app: Any, emulated: Any, browser: Any) -> None:
    user = get_user_model().objects.create_user("alice", "alice@example.com", PASSWORD)
    conversation = _long_conversation(user, turns=2)
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    base = fresh_app.url
    sign_in(page, base)
    page.goto(f"{base}/c/{conversation.pk}/")
    toggle = page.locator(".pane-head .drawer-toggle")
    sidebar = page.locator("#sidebar")
    # Closed: it says so, and its off-screen links cannot be reached with Tab.
    assert toggle.get_attribute("aria-expanded") == "false"
    assert toggle.get_attribute("aria-controls") == "sidebar"
    assert sidebar.get_attribute("aria-hidden") == "true"
    assert page.evaluate("document.getElementById('sidebar').inert") is True
    assert not _tabbable_in_sidebar(page)
    # Open: focus moves into it.
    toggle.focus()
    page.keyboard.press("Enter")
    page.wait_for_timeout(300)
    assert toggle.get_attribute("aria-expanded") == "true"
    assert sidebar.get_attribute("aria-hidden") is None
    assert page.evaluate("!!document.activeElement.closest('#sidebar')")
    assert sidebar.bounding_box()["x"] == 0
    # While open, Tab stays inside it (the page behind is inert).
    for _ in range(15):
        page.keyboard.press("Tab")
        assert page.evaluate("!!document.activeElement.closest('#sidebar')"), page.evaluate(
            "document.activeElement.outerHTML.slice(0, 200)")
    for _ in range(10):
        page.keyboard.press("Shift+Tab")
        assert page.evaluate("!!document.activeElement.closest('#sidebar')")
    # Esc closes it and gives focus back to the toggle.
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)
    assert toggle.get_attribute("aria-expanded") == "false"
    assert sidebar.bounding_box()["x"] < 0
    assert page.evaluate("document.activeElement.classList.contains('drawer-toggle')")
    # On a desktop the list is always there and always reachable.
    page.set_viewport_size(DESKTOP)
    page.wait_for_timeout(100)
    assert sidebar.get_attribute("aria-hidden") is None
    assert _tabbable_in_sidebar(page)
    context.close()


def test_the_language_menu_waits_for_enter_before_reloading(
        fresh_app: Any, emulated: Any, browser: Any) -> None:
    get_user_model().objects.create_user("alice", "alice@example.com", PASSWORD)
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    base = fresh_app.url
    page.goto(base + "/accounts/login/")
    page.evaluate("window.__samePage = true")
    page.locator("#language-select").focus()
    page.keyboard.press("ArrowDown")
    page.wait_for_timeout(500)
    assert page.evaluate("window.__samePage === true"), "an arrow key reloaded the page"
    assert page.locator("#language-select").input_value() == "zh-hans"
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowDown")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__samePage === true")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.evaluate("document.documentElement.lang") == "zh-hans"
    assert "登录" in page.content()
    # A pick with the mouse still applies at once.
    with page.expect_navigation():
        page.select_option("#language-select", "en")
    assert page.evaluate("document.documentElement.lang") == "en"
    context.close()


def test_a_missing_conversation_shows_the_layout_and_the_way_back(
        fresh_app: Any, emulated: Any, browser: Any) -> None:
    get_user_model().objects.create_user("alice", "alice@example.com", PASSWORD)
    context = browser.new_context(viewport=PHONE, color_scheme="dark")
    page = context.new_page()
    base = fresh_app.url
    sign_in(page, base)
    context.add_cookies([{"name": "django_language", "value": "zh-hans", "url": base}])
    response = page.goto(f"{base}/c/{uuid.uuid4()}/")
    assert response is not None and response.status == 404
    assert page.locator(".topbar .brand").is_visible()
    assert page.locator("h1").inner_text() == "找不到这个对话"
    screenshot(page, "error-404-phone-dark-zh")
    page.get_by_role("link", name="返回你的对话").click()
    page.wait_for_url(base + "/")
    context.close()


def test_skip_links_lead_to_the_content_and_to_the_message_box(
        fresh_app: Any, emulated: Any, browser: Any) -> None:
    user = get_user_model().objects.create_user("alice", "alice@example.com", PASSWORD)
    conversation = _long_conversation(user, turns=1)
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    base = fresh_app.url
    sign_in(page, base)
    page.goto(f"{base}/c/{conversation.pk}/")
    assert page.locator(".skip-link").first.bounding_box()["y"] < 0  # out of sight
    page.locator(".topbar .brand").focus()  # the links come just before it
    page.keyboard.press("Shift+Tab")
    assert page.locator(":focus").inner_text() == "Skip to the message box"
    page.keyboard.press("Shift+Tab")
    first = page.locator(":focus")
    assert first.inner_text() == "Skip to content"
    assert first.bounding_box()["y"] >= 0  # shown once focused
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "composer-text"
    # The focused composer shows a ring, not only a thin border colour.
    assert page.evaluate("getComputedStyle(document.getElementById('composer')).outlineStyle") \
        == "solid"
    page.goto(base + "/account/tokens/")  # no message box: only the first link
    assert page.locator("[data-skip-composer]").is_hidden()
    page.locator(".topbar .brand").focus()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    context.close()
