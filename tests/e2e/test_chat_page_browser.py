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

from conversations.models import Message
from tests.conftest import PASSWORD, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

FINAL = ("complete", "stopped", "failed", "interrupted")


@pytest.fixture
def chat(live_app: Any, emulated: Any, page: Any, owner: Any) -> Any:
    page.goto(live_app.url + "/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(live_app.url + "/")
    return page


def wait_js(page: Any, expression: str, timeout: float = 20.0) -> None:
    """Poll a JS expression with page.evaluate: wait_for_function would need 'unsafe-eval',
    which our Content-Security-Policy (rightly) refuses."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if page.evaluate(expression):
            return
        page.wait_for_timeout(25)
    raise AssertionError(f"timed out waiting for {expression}")


def _start(page: Any, text: str, model: str = "llama-3.2-3b") -> None:
    page.select_option("#id_model", model)
    page.fill("#id_text", text)
    page.press("#id_text", "Enter")
    page.wait_for_url("**/c/**")


def _last_answer(page: Any) -> Any:
    return page.locator(".msg-assistant").last


def _wait_status(page: Any, status: str, timeout: float = 20_000) -> None:
    page.wait_for_selector(f'.msg-assistant:last-of-type[data-status="{status}"]',
                           timeout=timeout)


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
        while time.monotonic() < deadline:
            if Message.objects.filter(seq=seq, role="assistant", status__in=FINAL).exists():
                break
            time.sleep(0.02)
        time.sleep(0.15)  # and let its final frames reach the page first
        held.append(seq)
        route.fulfill(response=response)

    page.route("**/c/*/messages/", hold)
    return held


# --- defect 1: the composer is never stuck --------------------------------------------------
def test_the_composer_is_free_after_each_fast_answer(chat: Any) -> None:
    page = chat
    _start(page, "Warm up [[emu:tokens n=1]]")
    _wait_status(page, "complete")
    wait_js(page, "!document.querySelector('[data-send]').disabled", timeout=5)
    held = _hold_post_replies_until_answer_ended(page)
    for round_ in range(12):
        before = _answers(page)
        page.fill("#composer-text", f"Fast {round_} [[emu:tokens n=1]]")
        page.press("#composer-text", "Enter")  # Enter sends: the previous answer freed the composer
        wait_js(page, f"document.querySelectorAll('.msg-assistant').length === {before + 1}",
                timeout=10)
        _wait_status(page, "complete", timeout=10_000)
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
        _wait_status(page, "complete", timeout=10_000)
        wait_js(page, "(() => { const s = document.querySelector('[data-send]');"
                      " return !s.disabled && document.querySelector('[data-stop]').hidden; })()",
                timeout=2)
    assert Message.objects.filter(role="assistant", status="complete").count() == 19
    assert page.console_errors == []


def test_a_slow_answer_keeps_send_disabled_and_stop_visible_until_it_ends(chat: Any) -> None:
    page = chat
    _start(page, "Take your time [[emu:tokens n=40 rate=20]]")
    page.wait_for_selector(".msg-assistant")
    seen_busy = 0
    while _last_answer(page).get_attribute("data-status") in ("queued", "streaming"):
        busy = page.evaluate(
            "(() => { const s = document.querySelector('[data-send]');"
            " const stop = document.querySelector('[data-stop]');"
            " const el = document.querySelector('.msg-assistant:last-of-type');"
            " if (!['queued', 'streaming'].includes(el.dataset.status)) return null;"
            " return s.disabled && !stop.hidden; })()")
        if busy is not None:
            assert busy, "Send must stay disabled and Stop visible while the answer runs"
            seen_busy += 1
        page.wait_for_timeout(100)
    assert seen_busy >= 5
    _wait_status(page, "complete")
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
    _wait_status(page, "complete")
    wait_js(page, "!document.querySelector('[data-send]').disabled", timeout=2)
    screenshot(page, "chat-page-composer-free")
