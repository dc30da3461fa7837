"""A Cloudflare outage as a reader sees it: headless Chromium against a real daphne process and
the emulators. The answer continues on Qianfan; the page says so in one line while it is still
being written and after a reload, in English and in Chinese.
"""

from __future__ import annotations

from typing import Any

import pytest

from conversations.chat import services
from conversations.models import Message
from providers.emulators import Fault
from providers.models import ModelFallback
from tests.conftest import screenshot
from tests.e2e.browser import sign_in, wait_js
from tests.support import model

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

NOTICE = ("Cloudflare Workers AI is over capacity; answered by Meta-Llama-3-70B-Instruct on "
          "Baidu Qianfan.")


def test_a_cloudflare_outage_shows_one_line_and_the_answer_from_qianfan(
        live_app: Any, emulated: Any, page: Any, owner: Any) -> None:
    ModelFallback.objects.create(model=model("llama-3.2-3b"), fallback=model("llama-3-70b"))
    emulated.script("cloudflare", Fault("429-before", code=3040), times=None)
    emulated.script("qianfan", Fault("slow", rate=15, n=40), times=None)  # ~3 s of writing
    conversation = services.conversation_create(owner, model=model("llama-3.2-3b"))
    sign_in(page, live_app.url, owner.username)
    page.goto(f"{live_app.url}/c/{conversation.pk}/")
    page.fill("#composer-text", "Tell me about llamas")
    page.keyboard.press("Enter")

    # Live: the notice and the answering model's name arrive while it is still writing.
    note = page.locator(".msg-assistant [data-fallback-note]")
    note.wait_for(timeout=20_000)
    assert note.inner_text().strip() == NOTICE
    assert page.locator(".msg-assistant").last.get_attribute("data-status") in (
        "streaming", "queued")
    name = page.locator(".msg-assistant .model-name").last.inner_text()
    assert "Meta-Llama-3-70B-Instruct" in name
    screenshot(page, "fallback-live")
    page.wait_for_selector('.msg-assistant:last-of-type[data-status="complete"]', timeout=20_000)
    answer = Message.objects.get(conversation=conversation, role=Message.Role.ASSISTANT)
    wait_js(page, "document.querySelector('.msg-assistant .msg-body').textContent.trim()"
                  ".length > 20")
    body = page.locator(".msg-assistant .msg-body").last.inner_text()
    assert answer.content.split()[0] in body
    assert page.locator(".msg-assistant [data-fallback-note]").count() == 1  # one line

    # After a reload, and in Chinese.
    page.reload()
    assert page.locator(".msg-assistant [data-fallback-note]").inner_text().strip() == NOTICE
    page.context.add_cookies([{"name": "django_language", "value": "zh-hans",
                               "url": live_app.url}])
    page.reload()
    chinese = page.locator(".msg-assistant [data-fallback-note]").inner_text().strip()
    assert "Meta-Llama-3-70B-Instruct" in chinese and "answered by" not in chinese
    screenshot(page, "fallback-zh")
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    page.locator(".msg-assistant [data-fallback-note]").wait_for()
    screenshot(page, "fallback-phone")
