"""Titles and messages as a reader sees them: headless Chromium against a real daphne process.

The providers point at the emulators, which answer a title request like any other (an echo of
the prompt with Markdown and filler): what lands in the header and the sidebar must still be a
short plain title.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from conversations.chat import services
from conversations.models import Conversation, UsageRecord
from tests.conftest import ARTIFACTS, ServerProcess, child_env, screenshot
from tests.e2e.browser import sign_in, wait_js
from tests.support import model

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

MARKUP = ("**", "```", "`", "[[", "__")


@pytest.fixture(scope="module")
def titled_app(django_db_setup: Any, django_db_blocker: Any) -> Iterator[ServerProcess]:
    """daphne on the test database with generated titles on (off for the other tests)."""
    with django_db_blocker.unblock():
        env = child_env(GENERATED_TITLES="1")
    server = ServerProcess(env, ARTIFACTS / "logs" / "daphne-titles.log")
    yield server
    server.stop()






def _header(page: Any) -> str:
    return str(page.locator("#conv-title").inner_text()).strip()


def _sidebar_current(page: Any) -> str:
    return str(page.locator(".conv-item.current .conv-title").first.inner_text()).strip()


def test_the_first_answer_gives_the_conversation_a_plain_title_without_a_reload(
        titled_app: Any, celery_worker_process: Any, emulated: Any, page: Any,
        owner: Any) -> None:
    # With REDIS_URL the title is a Celery task: the session's worker takes it.
    conversation = services.conversation_create(owner, model=model("llama-3.2-3b"))
    sign_in(page, titled_app.url, owner.username)
    page.goto(f"{titled_app.url}/c/{conversation.pk}/", )
    prompt = ("**Explain** the `zip` function\n```python\nprint(list(zip(a, b)))\n```\n"
              "[[emu:tokens n=14]]")
    page.fill("#composer-text", prompt)
    page.keyboard.press("Enter")
    page.wait_for_selector('.msg-assistant:last-of-type[data-status="complete"]',
                           timeout=20_000)
    # The generated title arrives after the answer, on the open page.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if UsageRecord.objects.filter(conversation=conversation, purpose="title",
                                      finished_at__isnull=False).exists():
            break
        time.sleep(0.1)
    stored = Conversation.objects.get(pk=conversation.pk)
    assert stored.title_is_auto and stored.title
    wait_js(page, f"document.getElementById('conv-title').textContent.trim() === "
                    f"{stored.title!r}")
    header, sidebar = _header(page), _sidebar_current(page)
    screenshot(page, "title-generated")
    for text in (header, sidebar, stored.title):
        assert not any(mark in text for mark in MARKUP), text
        assert "\n" not in text and len(text) <= 80
    assert stored.title in sidebar
    assert len(stored.title.split()) <= 8
    page.reload()
    assert _header(page) == stored.title
    assert stored.title in _sidebar_current(page)
    assert page.console_errors == []


def test_a_failed_answer_reads_in_chinese_for_a_chinese_reader(
        titled_app: Any, emulated: Any, page: Any, owner: Any) -> None:
    conversation = services.conversation_create(owner, model=model("llama-3.2-3b"))
    sign_in(page, titled_app.url, owner.username)
    page.context.add_cookies([{"name": "django_language", "value": "zh-hans",
                               "url": titled_app.url}])
    page.goto(f"{titled_app.url}/c/{conversation.pk}/", )
    page.fill("#composer-text", "Hello [[emu:auth-before]]")
    page.keyboard.press("Enter")
    page.wait_for_selector('.msg-assistant:last-of-type[data-status="failed"]',
                           timeout=20_000)
    note = page.locator(".msg-assistant:last-of-type [data-note]")
    wait_js(page, "document.querySelector('.msg-assistant:last-of-type [data-note]')"
                    "?.textContent.trim().length > 0")
    live = str(note.inner_text())
    page.reload()
    reloaded = str(page.locator(".msg-assistant:last-of-type [data-note]").inner_text())
    screenshot(page, "failure-zh")
    for text in (live, reloaded):
        assert "服务商" in text, text
        assert "The provider" not in text, text
    assert page.console_errors == []
