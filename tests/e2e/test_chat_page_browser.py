"""The chat page's own behaviour in headless Chromium against a real daphne process: the composer's
state while answers run, Markdown while it streams, where an image conversation opens, the live
region, focus and the keyboard shortcuts.

The providers point at the emulators; `[[emu:...]]` in a prompt scripts the "model". Nothing of
our own code is patched: the only hand on the wire is Playwright holding back a POST reply, as a
slow network would.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.db import connection

from conversations.models import Message
from tests.conftest import screenshot
from tests.e2e.browser import last_answer, sign_in, start_chat, wait_js, wait_status

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

FINAL = ("complete", "stopped", "failed", "interrupted")


@pytest.fixture
def chat(live_app: Any, emulated: Any, page: Any, owner: Any) -> Any:
    sign_in(page, live_app.url)
    return page










def _answers(page: Any) -> int:
    return int(page.locator(".msg-assistant").count())


def _send_is_free(page: Any) -> bool:
    return bool(page.evaluate(
        "(() => { const s = document.querySelector('[data-send]');"
        " const stop = document.querySelector('[data-stop]');"
        " return !!s && !s.disabled && !!stop && stop.hidden; })()"))


def _hold_post_replies_until_answer_ended(page: Any) -> list[int]:
    """Hold each reply to the composer's POST until its answer is stored as ended: the answer
    then always ends before the reply puts it on the page (a slow network, a fast model)."""
    held: list[int] = []

    def hold(route: Any) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        response = route.fetch()
        try:
            seq = int(response.json()["assistant"]["seq"])
        except (ValueError, KeyError, TypeError):
            route.fulfill(response=response)
            return
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                if Message.objects.filter(seq=seq, role="assistant", status__in=FINAL).exists():
                    break
                time.sleep(0.02)
        finally:
            # Playwright runs this handler in a context of its own, with its own database
            # connection: give it back, or each held reply keeps one of PostgreSQL's pool.
            connection.close()
        time.sleep(0.15)  # and let its final frames reach the page first
        held.append(seq)
        route.fulfill(response=response)

    page.route("**/c/*/messages/", hold)
    return held


# --- defect 1: the composer is never stuck --------------------------------------------------
def test_the_composer_is_free_after_each_fast_answer(chat: Any) -> None:
    page = chat
    start_chat(page, "Warm up [[emu:tokens n=1]]")
    wait_status(page, "complete")
    wait_js(page, "!document.querySelector('[data-send]').disabled", timeout=5)
    held = _hold_post_replies_until_answer_ended(page)
    for round_ in range(12):
        before = _answers(page)
        page.fill("#composer-text", f"Fast {round_} [[emu:tokens n=1]]")
        page.press("#composer-text", "Enter")  # Enter sends: the previous answer freed the composer
        wait_js(page, f"document.querySelectorAll('.msg-assistant').length === {before + 1}",
                timeout=10)
        wait_status(page, "complete", timeout=10_000)
        # At once: no reload, no waiting for anything but the answer's own end.
        wait_js(page, "(() => { const s = document.querySelector('[data-send]');"
                      " return !s.disabled && document.querySelector('[data-stop]').hidden; })()",
                timeout=2)
        assert page.input_value("#composer-text") == ""
    assert len(held) == 12, "every reply came after its answer had ended"
    page.unroute("**/c/*/messages/")
    # And without any holding back, as fast as the page allows (19 prompts in all stay under
    # the 20 a minute a user may send).
    for round_ in range(6):
        before = _answers(page)
        page.fill("#composer-text", f"Quick {round_} [[emu:tokens n=1]]")
        page.press("#composer-text", "Enter")
        wait_js(page, f"document.querySelectorAll('.msg-assistant').length === {before + 1}",
                timeout=10)
        wait_status(page, "complete", timeout=10_000)
        wait_js(page, "(() => { const s = document.querySelector('[data-send]');"
                      " return !s.disabled && document.querySelector('[data-stop]').hidden; })()",
                timeout=2)
    assert Message.objects.filter(role="assistant", status="complete").count() == 19
    assert page.console_errors == []


def test_a_slow_answer_keeps_send_disabled_and_stop_visible_until_it_ends(chat: Any) -> None:
    page = chat
    start_chat(page, "Take your time [[emu:tokens n=40 rate=20]]")
    page.wait_for_selector(".msg-assistant")
    seen_busy = 0
    while last_answer(page).get_attribute("data-status") in ("queued", "streaming"):
        busy = page.evaluate(
            "(() => { const s = document.querySelector('[data-send]');"
            " const stop = document.querySelector('[data-stop]');"
            " const el = document.querySelector('.msg-assistant:last-of-type');"
            " if (!['queued', 'streaming'].includes(el.dataset.status) || el.dataset.ended)"
            " return null;"
            " return s.disabled && !stop.hidden; })()")
        if busy is not None:
            assert busy, "Send must stay disabled and Stop visible while the answer runs"
            seen_busy += 1
        page.wait_for_timeout(100)
    assert seen_busy >= 5
    wait_status(page, "complete")
    wait_js(page, "!document.querySelector('[data-send]').disabled", timeout=2)
    assert _send_is_free(page)
    # Enter while an answer runs does not send a second prompt.
    page.fill("#composer-text", "Another slow one [[emu:tokens n=40 rate=20]]")
    page.press("#composer-text", "Enter")
    page.wait_for_selector(".msg-assistant >> nth=1")
    page.fill("#composer-text", "Not now")
    page.press("#composer-text", "Enter")
    page.wait_for_timeout(300)
    assert _answers(page) == 2
    assert page.input_value("#composer-text") == "Not now"
    wait_status(page, "complete")
    wait_js(page, "!document.querySelector('[data-send]').disabled", timeout=2)
    screenshot(page, "chat-page-composer-free")


# --- defect 2: Markdown while it streams ----------------------------------------------------
TAIL = "document.querySelector('.msg-assistant:last-of-type [data-tail]')"


def _watch_tail(page: Any, seconds: float, shot: str = "") -> dict[str, Any]:
    """Sample the open tail while the last answer streams: which elements it ever held."""
    seen: dict[str, Any] = {"tags": set(), "texts": [], "streaming_samples": 0}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sample = page.evaluate(f"""(() => {{
            const el = document.querySelector('.msg-assistant:last-of-type');
            const tail = {TAIL};
            if (!el || !tail) return null;
            return {{status: el.dataset.status,
                     tags: [...tail.querySelectorAll('*')].map((n) => n.tagName.toLowerCase()),
                     strong: [...tail.querySelectorAll('strong')].map((n) => n.textContent),
                     text: tail.textContent}};
        }})()""")
        if sample and sample["status"] in ("queued", "streaming"):
            seen["streaming_samples"] += 1
            seen["tags"].update(sample["tags"])
            seen["texts"].append(sample["text"])
            seen.setdefault("strong", []).extend(sample["strong"])
            if shot and sample["strong"] and "shot" not in seen:
                seen["shot"] = screenshot(page, shot)
        elif sample and sample["status"] in FINAL:
            break
        page.wait_for_timeout(40)
    return seen


def test_markdown_is_formatted_while_it_streams_and_ends_as_a_reload_shows_it(chat: Any) -> None:
    page = chat
    text = ("Here is **bold** and *em* and `code` and ~~gone~~ in one open paragraph that keeps "
            "going for a while so that it streams slowly enough to be seen half written, then ends")
    start_chat(page, f"[[emu:verbatim rate=12]] {text}")
    seen = _watch_tail(page, 20, shot="chat-page-markdown-streaming")
    seen.pop("shot", None)
    assert seen["streaming_samples"] >= 5, seen
    assert "bold" in seen.get("strong", []), f"**bold** is a <strong> while it streams {seen}"
    assert {"strong", "em", "code", "del"} <= seen["tags"], seen
    assert not any("**bold**" in t for t in seen["texts"]), f"no raw ** once closed {seen}"
    wait_status(page, "complete")
    wait_js(page, f"{TAIL}.hidden", timeout=5)
    live = last_answer(page).locator(".msg-body").inner_html()
    page.reload()
    assert last_answer(page).locator(".msg-body").inner_html() == live
    assert last_answer(page).locator(".md strong").inner_text() == "bold"
    assert page.console_errors == []


def test_html_in_a_streaming_tail_stays_text(chat: Any) -> None:
    page = chat
    page.add_init_script("window.alert = () => { window.__xss = 'alert'; };")
    text = ("Look <img src=x onerror=\"window.__xss = 1\"> and <script>window.__xss = 2</script> "
            "and <b onmouseover=\"window.__xss = 3\">b</b> and [x](javascript:window.__xss=4) "
            "with **bold** around it, still one open paragraph that keeps on streaming slowly")
    start_chat(page, f"[[emu:verbatim rate=12]] {text}")
    seen = _watch_tail(page, 20)
    assert seen["streaming_samples"] >= 5
    assert seen["tags"] <= {"p", "strong", "em", "code", "del", "span"}, seen["tags"]
    assert any("<img src=x" in t for t in seen["texts"])
    assert any("<script>" in t for t in seen["texts"])
    assert page.evaluate("window.__xss") is None
    wait_status(page, "complete")
    body = last_answer(page).locator(".msg-body")
    assert body.locator("img, script, a[href^='javascript']").count() == 0
    assert page.evaluate("window.__xss") is None


def test_the_tail_renderer_builds_only_safe_nodes(chat: Any) -> None:
    """The open-block renderer alone (static/js/tail.js), on the blocks it knows and on HTML."""
    page = chat
    cases = page.evaluate("""async () => {
        const { renderTail } = await import('/static/js/tail.js');
        const show = (text) => {
            const box = document.createElement('div');
            renderTail(box, text);
            return box.innerHTML;
        };
        return {
            inline: show('a **b** *c* _d_ `e` ~~f~~ snake_case_word 2*3*4'),
            heading: show('## Title with **bold**'),
            list: show('- one **1**\\n- two\\n\\n1. first\\n2. second'),
            quote: show('> quoted *text*'),
            fence: show('Intro\\n\\n```py\\nif a < b:\\n    print("<b>")'),
            unclosed: show('an **open pair and a `tick'),
            link: show('see [the docs](https://example.com) now'),
            html: show('<img src=x onerror=alert(1)> <script>alert(2)</script> **<i>x</i>**'),
        };
    }""")
    assert cases["inline"] == ("<p>a <strong>b</strong> <em>c</em> <em>d</em> <code>e</code> "
                               "<del>f</del> snake_case_word 2<em>3</em>4</p>")
    assert cases["heading"] == "<h2>Title with <strong>bold</strong></h2>"
    assert cases["list"] == ("<ul><li>one <strong>1</strong></li><li>two</li></ul>"
                             "<ol><li>first</li><li>second</li></ol>")
    assert cases["quote"] == "<blockquote><p>quoted <em>text</em></p></blockquote>"
    assert cases["fence"] == (
        '<p>Intro</p><div class="code-block code-block-open"><div class="code-header">'
        '<span class="code-lang">py</span></div>'
        '<pre><code>if a &lt; b:\n    print("&lt;b&gt;")</code></pre></div>')
    assert cases["unclosed"] == "<p>an **open pair and a `tick</p>"
    assert cases["link"] == '<p>see <span class="tail-link">the docs</span> now</p>'
    assert cases["html"] == ("<p>&lt;img src=x onerror=alert(1)&gt; &lt;script&gt;alert(2)"
                             "&lt;/script&gt; <strong>&lt;i&gt;x&lt;/i&gt;</strong></p>")


# --- defect 5: an image conversation opens at its end ---------------------------------------
def _image_conversation(user: Any, count: int = 6) -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile
    from PIL import Image

    from conversations.images.attachments import attachment_create
    from conversations.models import Conversation
    from tests.images.image_corpus import encode, noise
    from tests.support import model, queue_answer

    vision = model("llama-3.2-11b-vision")
    conversation = Conversation.objects.create(owner=user, model=vision, title="Pictures")
    sizes = [(1200, 900), (600, 1400), (1600, 500), (900, 900), (800, 1000), (1400, 800)]
    for index in range(count):
        width, height = sizes[index % len(sizes)]
        image: Image.Image = noise((width, height), seed=index)
        upload = SimpleUploadedFile(f"photo-{index}.png", encode(image, "PNG"), "image/png")
        attachment = attachment_create(user, upload)
        answer = queue_answer(user, conversation, f"What is in picture {index}?",
                              [attachment.pk])
        Message.objects.filter(pk=answer.pk).update(
            status="complete", content=f"Picture {index} shows noise.\n\n" + "Details. " * 40)
    return conversation


def test_an_image_conversation_opens_scrolled_to_its_end(chat: Any, live_app: Any,
                                                         owner: Any) -> None:
    page = chat
    conversation = _image_conversation(owner)
    for _ in range(2):  # a first visit, then with the images in the browser's cache
        page.goto(f"{live_app.url}/c/{conversation.pk}/")
        wait_js(page, "[...document.querySelectorAll('.msg-images img')]"
                      ".filter((img) => img.getBoundingClientRect().bottom > 0"
                      " && img.getBoundingClientRect().top < innerHeight)"
                      ".every((img) => img.complete && img.naturalWidth > 0)", timeout=20)
        page.wait_for_timeout(500)
        gap = page.evaluate("(() => { const m = document.getElementById('messages');"
                            " return m.scrollHeight - m.scrollTop - m.clientHeight; })()")
        assert gap <= 2, f"opened {gap}px above the end"
        boxes = page.evaluate("[...document.querySelectorAll('.msg-images img')]"
                              ".map((img) => [img.width, img.height])")
        assert all(0 < w <= 220 and 0 < h <= 220 for w, h in boxes), boxes
    screenshot(page, "chat-page-images-at-end")


# --- what a team expects: announcements, focus, Esc, shortcuts ------------------------------
WATCH_LIVE = """(() => {
    window.__said = [];
    const region = document.getElementById('answer-live');
    new MutationObserver(() => { if (region.textContent) window.__said.push(region.textContent); })
        .observe(region, {childList: true, characterData: true, subtree: true});
    return region.getAttribute('aria-live') + ' ' + region.getAttribute('role');
})()"""


def _said(page: Any) -> list[str]:
    return list(page.evaluate("window.__said"))


def test_the_composer_is_focused_on_every_chat_page_with_a_visible_ring(chat: Any) -> None:
    page = chat  # the first chat page of a new browser: nothing may take the focus away later
    page.wait_for_timeout(1000)
    assert page.evaluate("document.activeElement?.id") == "id_text"
    start_chat(page, "Hello [[emu:tokens n=3]]")
    page.wait_for_timeout(1000)
    assert page.evaluate("document.activeElement?.id") == "composer-text"
    ring = page.evaluate("(() => { const s = getComputedStyle(document.getElementById('composer'));"
                         " return [s.outlineStyle, parseFloat(s.outlineWidth)]; })()")
    assert ring[0] == "solid" and ring[1] >= 2, ring
    page.reload()
    wait_js(page, "document.activeElement?.id === 'composer-text'", timeout=5)
    screenshot(page, "chat-page-composer-focused")


def test_the_answer_is_announced_and_stop_returns_focus_to_the_composer(chat: Any) -> None:
    page = chat
    start_chat(page, "First [[emu:tokens n=3]]")
    wait_status(page, "complete")
    assert page.evaluate(WATCH_LIVE) == "polite status"
    page.fill("#composer-text", "Long one [[emu:tokens n=300 rate=20]]")
    page.press("#composer-text", "Enter")
    wait_js(page, "window.__said.includes('Writing an answer…')", timeout=10)
    page.click("[data-stop]")
    assert page.evaluate("document.activeElement?.id") == "composer-text"
    wait_status(page, "stopped")
    wait_js(page, "window.__said.includes('The answer was stopped.')", timeout=5)
    page.fill("#composer-text", "Short one [[emu:tokens n=5 rate=20]]")
    page.press("#composer-text", "Enter")
    wait_js(page, "window.__said.at(-1) === 'The answer is finished.'", timeout=10)
    page.fill("#composer-text", "Broken one [[emu:error-after n=3 rate=20]]")
    page.press("#composer-text", "Enter")
    wait_js(page, "window.__said.at(-1) === 'The answer failed.'", timeout=15)
    said = _said(page)
    assert said.count("Writing an answer…") == 3, said


def test_the_answer_is_announced_in_chinese(chat: Any, live_app: Any) -> None:
    page = chat
    page.context.add_cookies([{"name": "django_language", "value": "zh-hans",
                               "url": live_app.url}])
    page.goto(live_app.url + "/")
    start_chat(page, "你好 [[emu:tokens n=20 rate=20]]")
    page.evaluate(WATCH_LIVE)
    wait_status(page, "complete")
    wait_js(page, "window.__said.length > 0", timeout=5)
    said = _said(page)
    assert said[-1] == "回答已完成。", said
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("?")
    assert page.locator("#shortcuts-title").inner_text() == "键盘快捷键"


def test_code_blocks_offer_copy_in_the_readers_language(chat: Any, live_app: Any,
                                                         emulated: Any) -> None:
    # Rendered answers are cached and shared by readers of every language: the label is the
    # page's to set, on answers that streamed in and on answers read after a reload.
    page = chat
    page.context.add_cookies([{"name": "django_language", "value": "zh-hans",
                               "url": live_app.url}])
    page.goto(live_app.url + "/")
    emulated.script("cloudflare", "verbatim")
    start_chat(page, "```python\nprint(1)\n```")
    wait_status(page, "complete")
    labels = page.locator(".msg-assistant [data-copy]").all_inner_texts()
    assert labels == ["复制"], labels
    page.reload()
    labels = page.locator(".msg-assistant [data-copy]").all_inner_texts()
    assert labels == ["复制"], labels


def test_esc_and_cancel_close_an_edit_without_sending(chat: Any) -> None:
    page = chat
    start_chat(page, "Original [[emu:tokens n=3]]")
    wait_status(page, "complete")
    user = page.locator(".msg-user").first
    user.locator(".edit-prompt summary").click()
    wait_js(page, "document.activeElement?.matches('.edit-form textarea')", timeout=5)
    page.keyboard.type(" changed")
    page.keyboard.press("Escape")
    assert not page.evaluate("document.querySelector('.edit-prompt').open")
    assert page.evaluate("document.activeElement?.tagName") == "SUMMARY"
    user.locator(".edit-prompt summary").click()
    assert user.locator(".edit-form textarea").input_value() == "Original [[emu:tokens n=3]]"
    user.locator(".edit-form textarea").fill("Something else")
    user.locator("[data-edit-cancel]").click()
    assert not page.evaluate("document.querySelector('.edit-prompt').open")
    page.wait_for_timeout(300)
    assert Message.objects.filter(role="user").count() == 1


def test_keyboard_shortcuts_are_listed_in_a_dialog_and_each_works(chat: Any,
                                                                  live_app: Any) -> None:
    page = chat
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_app.url)
    start_chat(page, "Copy me [[emu:tokens n=6]]")
    wait_status(page, "complete")
    conversation_url = page.url

    # `?` in the message box is just a question mark.
    page.press("#composer-text", "?")
    assert page.input_value("#composer-text") == "?"
    assert page.locator("dialog[open]").count() == 0
    page.fill("#composer-text", "")

    # `?` elsewhere opens the list, an accessible modal <dialog>; Esc closes it.
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("?")
    dialog = page.locator("dialog#shortcuts-dialog[open]")
    assert dialog.count() == 1
    assert page.evaluate("document.getElementById(document.getElementById('shortcuts-dialog')"
                         ".getAttribute('aria-labelledby')).textContent") == "Keyboard shortcuts"
    assert page.evaluate("document.getElementById('shortcuts-dialog')"
                         ".contains(document.activeElement)")
    items = dialog.locator("dd").all_inner_texts()
    assert items == ["New chat", "Go to the message box", "Stop the answer being written",
                     "Copy the last answer", "Show these shortcuts"]
    screenshot(page, "chat-page-shortcuts")
    page.keyboard.press("Escape")
    assert page.locator("dialog[open]").count() == 0

    # `/` and Shift+Esc go to the message box.
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement?.id") == "composer-text"
    assert page.input_value("#composer-text") == ""
    page.focus("#conv-search")  # even from another field
    page.keyboard.press("Shift+Escape")
    assert page.evaluate("document.activeElement?.id") == "composer-text"

    # Ctrl+Shift+C copies the last answer.
    page.keyboard.press("Control+Shift+C")
    answer = last_answer(page).locator(".msg-body").inner_text().strip()
    deadline = time.monotonic() + 5
    copied = ""
    while time.monotonic() < deadline and copied != answer:
        copied = page.evaluate("navigator.clipboard.readText()")
        page.wait_for_timeout(50)
    assert copied == answer and answer.startswith("Echo: Copy me")

    # Esc while an answer streams: first it closes an open menu, then it stops the answer.
    page.fill("#composer-text", "A long one [[emu:tokens n=300 rate=20]]")
    page.press("#composer-text", "Enter")
    page.wait_for_selector("[data-stop]:not([hidden])")
    menu = page.locator("details.conv-menu")
    if menu.count():
        menu.locator("summary").click()
        page.keyboard.press("Escape")
        assert not menu.evaluate("(d) => d.open")
        page.wait_for_timeout(200)
        assert last_answer(page).get_attribute("data-status") in ("queued", "streaming")
    page.keyboard.press("Escape")
    wait_status(page, "stopped")

    # Ctrl+Shift+O opens a new chat.
    page.keyboard.press("Control+Shift+O")
    page.wait_for_url(live_app.url + "/")
    assert page.url != conversation_url
    wait_js(page, "document.activeElement?.id === 'id_text'", timeout=5)
