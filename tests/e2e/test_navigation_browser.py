"""Navigation and first use, as a person does it in Chromium against a real daphne process:
the model switcher, the organised sidebar and its row menus, search snippets, example prompts,
and a token page that a reload cannot make mint a second token."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.utils import timezone

from conversations.chat import services
from conversations.models import ApiToken, Conversation, Message, UserPreferences
from tests.conftest import PASSWORD, screenshot
from tests.e2e.browser import last_answer, sign_in
from tests.e2e.test_chat_browser import wait_js
from tests.support import model

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def signed_in_page(live_app: Any, emulated: Any, page: Any, owner: Any) -> Any:
    sign_in(page, live_app.url)
    page.base = live_app.url
    return page


def _chat(owner: Any, title: str, *, age: datetime.timedelta = datetime.timedelta(0),
          text: str = "", **extra: Any) -> Conversation:
    conversation = services.conversation_create(owner, model=model(), title=title)
    if text:
        Message.objects.create(conversation=conversation, seq=1, role="user", author=owner,
                               content=text)
        extra["next_seq"] = 2
    Conversation.objects.filter(pk=conversation.pk).update(
        updated_at=timezone.now() - age, **extra)
    return conversation




def _wait_complete(page: Any) -> None:
    page.wait_for_selector('.msg-assistant:last-of-type[data-status="complete"]',
                           timeout=20_000)


def _keep_page_marker(page: Any) -> None:
    """A value that survives only as long as the page is not reloaded."""
    page.evaluate("window.__sameDocument = 'yes'")


def _same_document(page: Any) -> bool:
    return page.evaluate("window.__sameDocument") == "yes"


# --- the model at hand ------------------------------------------------------------------------
def test_switching_the_model_makes_the_next_answer_come_from_it_and_a_reload_keeps_it(
        signed_in_page: Any, emulated: Any, owner: Any) -> None:
    page = signed_in_page
    page.select_option("#id_model", "llama-3.2-3b")
    page.fill("#id_text", "First question [[emu:tokens n=6]]")
    page.keyboard.press("Enter")
    page.wait_for_url("**/c/**")
    _wait_complete(page)
    assert last_answer(page).locator(".model-name").inner_text() == "Llama 3.2 3B Instruct"
    switcher = page.locator("#model-switch")
    assert switcher.input_value() == "llama-3.2-3b"
    option = switcher.locator('option[value="llama-3-70b"]').inner_text()
    assert "Baidu Qianfan" in option and "text" in option and "free" in option
    _keep_page_marker(page)
    switcher.select_option("llama-3-70b")
    wait_js(page, "document.querySelector('[data-model-switch-status]')?.textContent"
                  ".includes('Meta-Llama-3-70B-Instruct')")
    assert _same_document(page), "switching reloaded the page"
    page.fill("#composer-text", "Second question [[emu:tokens n=6]]")
    page.keyboard.press("Enter")
    page.wait_for_selector(".msg-assistant >> nth=1")
    _wait_complete(page)
    assert last_answer(page).locator(".model-name").inner_text() == (
        "Meta-Llama-3-70B-Instruct")
    assert emulated.calls("qianfan") == 1 and emulated.calls("cloudflare") == 1
    screenshot(page, "nav-model-switched")
    page.reload()
    assert page.locator("#model-switch").input_value() == "llama-3-70b"
    # Earlier answers keep the model that wrote them.
    assert page.locator(".msg-assistant .model-name").first.inner_text() == (
        "Llama 3.2 3B Instruct")
    # The new-chat page starts from the model last chosen.
    page.goto(page.base + "/")
    assert page.locator("#id_model").input_value() == "llama-3-70b"
    assert UserPreferences.objects.get(user=owner).default_model.slug == "llama-3-70b"
    assert page.console_errors == []


def test_the_switcher_works_from_the_keyboard_and_browsing_it_switches_nothing(
        signed_in_page: Any, owner: Any) -> None:
    page = signed_in_page
    conversation = _chat(owner, "Keyboard only", text="hello")
    page.goto(f"{page.base}/c/{conversation.pk}/")
    page.focus("#model-switch")
    start = page.locator("#model-switch").input_value()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    browsed = page.locator("#model-switch").input_value()
    assert browsed != start
    page.wait_for_timeout(400)
    conversation.refresh_from_db()
    assert conversation.model.slug == start, "browsing with the arrow keys switched already"
    page.keyboard.press("Enter")
    wait_js(page, "document.querySelector('[data-model-switch]').dataset.applied === "
                  f"'{browsed}'")
    conversation.refresh_from_db()
    assert conversation.model.slug == browsed
    assert page.evaluate("document.activeElement.id") == "model-switch"


def test_switching_to_a_model_that_needs_an_image_says_so_in_the_composer(
        signed_in_page: Any, owner: Any) -> None:
    page = signed_in_page
    conversation = _chat(owner, "Text only so far", text="hello")
    page.goto(f"{page.base}/c/{conversation.pk}/")
    page.select_option("#model-switch", "llama-3.2-90b-vision")
    wait_js(page, "document.querySelector('#composer [data-attach-note]')?.textContent"
                  ".includes('needs an image')")
    assert page.locator("#composer [data-attach-button]").is_visible()
    conversation.refresh_from_db()
    assert conversation.model.slug == "llama-3.2-90b-vision"


def test_share_and_export_are_in_the_conversation_header(signed_in_page: Any,
                                                        owner: Any) -> None:
    page = signed_in_page
    conversation = _chat(owner, "Worth sharing", text="hello")
    page.goto(f"{page.base}/c/{conversation.pk}/")
    page.click(".conv-menu summary")
    page.click("[data-header-share]")
    page.wait_for_url(f"**/c/{conversation.pk}/settings/#share")
    page.go_back()
    page.click(".conv-menu summary")
    with page.expect_download() as download:
        page.click("[data-header-export='md']")
    assert download.value.suggested_filename == "worth-sharing.md"


def test_on_a_phone_the_header_keeps_title_switcher_and_menu_in_view(
        live_app: Any, emulated: Any, browser: Any, owner: Any) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    page.goto(live_app.url + "/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(live_app.url + "/")
    conversation = _chat(owner, "A rather long conversation title on a small phone", text="hi")
    page.goto(f"{live_app.url}/c/{conversation.pk}/")
    for selector in ("#conv-title", "#model-switch", ".conv-menu summary"):
        box = page.locator(selector).bounding_box()
        assert box is not None and box["width"] > 20, selector
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (selector, box)
    page.select_option("#model-switch", "llama-3-70b")
    wait_js(page, "document.querySelector('[data-model-switch-status]')?.textContent"
                  ".includes('Meta-Llama-3-70B-Instruct')")
    screenshot(page, "nav-phone-header")
    context.close()


# --- a sidebar that organises -----------------------------------------------------------------
def test_the_sidebar_groups_conversations_by_day_with_pinned_first(signed_in_page: Any,
                                                                  owner: Any) -> None:
    page = signed_in_page
    day = datetime.timedelta(days=1)
    _chat(owner, "Talked today")
    _chat(owner, "Talked yesterday", age=day)
    _chat(owner, "Earlier this week", age=4 * day)
    _chat(owner, "Earlier this month", age=20 * day)
    _chat(owner, "Long ago", age=120 * day)
    _chat(owner, "Pinned for good", age=300 * day, pinned=True)
    page.goto(page.base + "/")
    headings = page.locator(".conv-group-title").all_text_contents()
    month = (timezone.now() - 120 * day).strftime("%B %Y")
    assert headings == ["Pinned", "Today", "Yesterday", "Previous 7 days", "Previous 30 days",
                        month]
    titles = page.locator(".conv-group[data-group='pinned'] .conv-title").all_inner_texts()
    assert len(titles) == 1 and "Pinned for good" in titles[0]
    screenshot(page, "nav-sidebar-groups")


def test_the_row_menu_renames_pins_archives_and_deletes_without_a_reload(
        signed_in_page: Any, owner: Any) -> None:
    page = signed_in_page
    keep = _chat(owner, "Keeper")
    doomed = _chat(owner, "Doomed", age=datetime.timedelta(days=2))
    page.goto(page.base + "/")
    _keep_page_marker(page)

    def row(conversation: Conversation) -> Any:
        return page.locator(f"[data-conversation-row='{conversation.pk}']")

    # Rename (keyboard: open the menu, type, Enter).
    row(keep).locator(".row-menu summary").click()
    field = row(keep).locator("input[name=title]")
    field.fill("Renamed <b>keeper</b>")
    field.press("Enter")
    wait_js(page, f"document.querySelector(\"[data-conversation-row='{keep.pk}'] "
                  ".conv-title\")?.textContent.includes('Renamed <b>keeper</b>')")
    assert row(keep).locator(".conv-title b").count() == 0  # text, never markup
    # Pin: the row moves to the pinned group.
    row(keep).locator(".row-menu summary").click()
    row(keep).locator("[data-row-action='pin'] button").click()
    page.wait_for_selector(f".conv-group[data-group='pinned'] [data-conversation-row='{keep.pk}']")
    # Esc closes an open menu.
    row(keep).locator(".row-menu summary").click()
    assert row(keep).locator(".row-menu").get_attribute("open") is not None
    page.keyboard.press("Escape")
    assert row(keep).locator(".row-menu").get_attribute("open") is None
    # Archive: the row leaves the list (it is under "Archived").
    row(keep).locator(".row-menu summary").click()
    row(keep).locator("[data-row-action='archive'] button").click()
    page.wait_for_selector(f"[data-conversation-row='{keep.pk}']", state="detached")
    # Delete, after a confirmation.
    page.once("dialog", lambda dialog: dialog.accept())
    row(doomed).locator(".row-menu summary").click()
    row(doomed).locator("[data-row-action='delete'] button").click()
    page.wait_for_selector(f"[data-conversation-row='{doomed.pk}']", state="detached")
    assert _same_document(page), "a row action reloaded the page"
    keep.refresh_from_db()
    assert keep.title == "Renamed <b>keeper</b>" and keep.pinned and keep.archived
    assert not Conversation.objects.filter(pk=doomed.pk).exists()
    page.goto(page.base + "/?archived=1")
    assert "Renamed <b>keeper</b>" in page.locator(".conv-list").inner_text()
    assert page.console_errors == []


def test_esc_on_an_open_row_menu_closes_it_and_leaves_a_running_answer_alone(
        signed_in_page: Any) -> None:
    page = signed_in_page
    page.select_option("#id_model", "llama-3.2-3b")
    page.fill("#id_text", "A long story [[emu:tokens n=200 rate=20]]")
    page.keyboard.press("Enter")
    page.wait_for_url("**/c/**")
    page.wait_for_selector('.msg-assistant:last-of-type[data-status="streaming"]')
    menu = page.locator(".conv-row.current .row-menu")
    menu.locator("summary").click()
    assert menu.get_attribute("open") is not None
    page.keyboard.press("Escape")
    assert menu.get_attribute("open") is None
    page.wait_for_timeout(500)
    assert last_answer(page).get_attribute("data-status") == "streaming"
    page.click("[data-stop]")
    page.wait_for_selector('.msg-assistant:last-of-type[data-status="stopped"]')


def test_the_row_menu_works_without_scripts(live_app: Any, emulated: Any, browser: Any,
                                            owner: Any) -> None:
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(live_app.url + "/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")  # (the language form has a button without JS)
    page.wait_for_url(live_app.url + "/")
    conversation = _chat(owner, "Plain forms")
    page.goto(live_app.url + "/")
    row = page.locator(f"[data-conversation-row='{conversation.pk}']")
    row.locator(".row-menu summary").click()
    row.locator("[data-row-action='pin'] button").click()
    page.wait_for_selector(
        f".conv-group[data-group='pinned'] [data-conversation-row='{conversation.pk}']")
    assert page.url == live_app.url + "/"
    context.close()


def test_search_shows_the_matching_snippet_with_the_match_highlighted(signed_in_page: Any,
                                                                      owner: Any) -> None:
    page = signed_in_page
    _chat(owner, "Knitting", text="Tell me how <em>alpaca</em> wool compares with sheep wool "
                                  "for a winter sweater, and how to wash it.")
    _chat(owner, "Unrelated", text="What is the capital of France?")
    page.goto(page.base + "/")
    page.fill("#conv-search", "ALPACA")
    page.keyboard.press("Enter")
    page.wait_for_url("**/?q=ALPACA")
    rows = page.locator(".conv-row")
    assert rows.count() == 1
    snippet = rows.first.locator(".conv-snippet")
    assert snippet.locator("mark").inner_text() == "alpaca"
    assert "<em>" in snippet.inner_text() and snippet.locator("em").count() == 0
    screenshot(page, "nav-search-snippet")


def test_an_imported_conversation_is_marked_imported(signed_in_page: Any, owner: Any,
                                                     tmp_path: Any) -> None:
    page = signed_in_page
    source = _chat(owner, "Travel plans", text="Where to go in spring?")
    page.goto(page.base + "/")
    with page.expect_download() as download:
        page.evaluate(f"window.location.href = '/c/{source.pk}/export/?format=json'")
    path = tmp_path / "export.json"
    download.value.save_as(path)
    page.click(".sidebar-foot .import summary")
    page.set_input_files(".sidebar-foot .import input[type=file]", str(path))
    page.click(".sidebar-foot .import button[type=submit]")
    page.wait_for_url("**/c/**")
    imported = Conversation.objects.get(imported=True)
    badge = page.locator(f"[data-conversation-row='{imported.pk}'] [data-imported]")
    assert badge.inner_text() == "imported"
    assert page.locator(f"[data-conversation-row='{source.pk}'] [data-imported]").count() == 0


def test_learning_the_time_zone_never_takes_the_focus_from_the_composer(
        live_app: Any, emulated: Any, browser: Any, owner: Any) -> None:
    # A reader east of the server's zone (UTC): the page learns it and regroups the sidebar.
    context = browser.new_context(timezone_id="Asia/Shanghai")
    page = context.new_page()
    page.goto(live_app.url + "/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(live_app.url + "/")
    _chat(owner, "Something to list")
    context.clear_cookies(name="tz")
    held: list[Any] = []  # the sidebar's refresh, answered only once the reader types
    page.route("**/sidebar/**", lambda route: held.append(route))
    page.goto(live_app.url + "/")
    wait_js(page, "document.cookie.includes('tz=Asia%2FShanghai')")
    page.focus("#id_text")
    page.keyboard.type("typing right away")
    for _ in range(50):
        if held:
            break
        page.wait_for_timeout(100)
    assert held, "a new time zone refreshes the sidebar"
    held[0].continue_()
    page.wait_for_timeout(500)  # the refresh has landed
    assert page.evaluate("document.activeElement.id") == "id_text"
    assert page.locator("#id_text").input_value() == "typing right away"
    # Once the zone is known, pages come grouped in it and nothing is refreshed again.
    page.goto(live_app.url + "/")
    assert page.locator("[data-sidebar]").get_attribute("data-zone") == "Asia/Shanghai"
    page.wait_for_timeout(300)
    assert len(held) == 1
    context.close()


def test_the_sidebar_and_the_switcher_read_in_chinese(signed_in_page: Any, owner: Any) -> None:
    page = signed_in_page
    conversation = _chat(owner, "今天的对话", text="你好")
    _chat(owner, "Yesterday's", age=datetime.timedelta(days=1), pinned=True)
    page.context.add_cookies([{"name": "django_language", "value": "zh-hans",
                               "url": page.base}])
    page.goto(f"{page.base}/c/{conversation.pk}/")
    assert page.locator(".conv-group-title").all_text_contents() == ["已置顶", "今天"]
    option = page.locator('#model-switch option[value="llama-3-70b"]').inner_text()
    assert "免费" in option and "文本" in option
    option = page.locator('#model-switch option[value="llama-3.2-3b"]').inner_text()
    assert "每百万词元 $0.05 / $0.34" in option
    page.emulate_media(color_scheme="dark")
    screenshot(page, "nav-chinese-dark")


# --- first use ----------------------------------------------------------------------------------
def test_an_example_prompt_fills_the_composer_for_the_chosen_kind_of_model(
        signed_in_page: Any) -> None:
    page = signed_in_page
    page.select_option("#id_model", "llama-3.2-3b")
    text_examples = page.locator("[data-example-kind='text'] [data-example]")
    assert text_examples.first.is_visible()
    assert not page.locator("[data-example-kind='vision'] [data-example]").first.is_visible()
    chosen = text_examples.nth(1).inner_text()
    text_examples.nth(1).click()
    assert page.locator("#id_text").input_value() == chosen
    assert page.evaluate("document.activeElement.id") == "id_text"
    page.select_option("#id_model", "llama-3.2-11b-vision")
    vision = page.locator("[data-example-kind='vision'] [data-example]")
    assert vision.first.is_visible() and not text_examples.first.is_visible()
    vision.first.click()
    assert page.locator("#id_text").input_value() == vision.first.inner_text()
    screenshot(page, "nav-examples")


def test_reloading_the_token_created_page_does_not_make_a_second_token(signed_in_page: Any,
                                                                       owner: Any) -> None:
    page = signed_in_page
    page.goto(page.base + "/account/tokens/")
    page.fill("#id_name", "nightly report")
    page.click("form.stack button[type=submit]")
    secret = page.locator("[data-new-token]").inner_text()
    assert secret.startswith("lc-")
    assert ApiToken.objects.filter(user=owner).count() == 1
    page.reload()
    page.wait_for_load_state()
    assert ApiToken.objects.filter(user=owner).count() == 1
    assert page.locator("[data-new-token]").count() == 0
    assert secret not in page.content()
    assert "nightly report" in page.locator("table").inner_text()
