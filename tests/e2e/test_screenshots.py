"""The chat page as the README shows it: desktop, phone, dark and Chinese.

Each run writes the pictures to test-artifacts/; `make screenshots` also copies them to
docs/screenshots/ (SCREENSHOTS_DIR), so the README's pictures are the page as it is.
The test also holds the page to what a picture cannot show: the composer is in view and free.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import screenshot
from tests.e2e.browser import sign_in, wait_status

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# The emulator's `verbatim` fault (scripted, so no marker shows) answers with the prompt
# itself: a Markdown answer to show.
PROMPT = ("Llamas are **camelids** from South America.\n\n- They hum\n- They spit, rarely\n\n"
          "```python\nprint('hello, llama')\n```")

SHOTS = [
    # name, viewport, colour scheme, locale
    ("chat-desktop", {"width": 1280, "height": 800}, "light", "en-US"),
    ("chat-phone", {"width": 390, "height": 844}, "light", "en-US"),
    ("chat-dark", {"width": 1280, "height": 800}, "dark", "en-US"),
    ("chat-chinese", {"width": 1280, "height": 800}, "light", "zh-CN"),
]


def _composer_in_view(page: Any) -> bool:
    box = page.locator("#composer [data-send]").bounding_box()
    viewport = page.viewport_size
    return bool(box) and box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"]


def test_the_chat_page_in_four_clothes(live_app: Any, emulated: Any, browser: Any,
                                       owner: Any) -> None:
    conversation_url = ""
    target = os.environ.get("SCREENSHOTS_DIR", "")
    for name, viewport, scheme, locale in SHOTS:
        context = browser.new_context(viewport=viewport, color_scheme=scheme, locale=locale)
        page = context.new_page()
        sign_in(page, live_app.url)
        if not conversation_url:
            emulated.script("cloudflare", "verbatim")
            page.select_option("#id_model", "llama-3.2-3b")
            page.fill("#id_text", PROMPT)
            page.keyboard.press("Enter")
            page.wait_for_url("**/c/**")
            conversation_url = page.url
        else:
            page.goto(conversation_url)
        wait_status(page, "complete")
        page.wait_for_timeout(300)  # the title and the sidebar settle
        assert _composer_in_view(page), name
        assert page.locator("#composer [data-send]").is_enabled(), name
        path = screenshot(page, f"readme-{name}")
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(target) / f"{name}.png")
        context.close()
