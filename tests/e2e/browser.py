"""What every browser test does the same way: sign in, start a chat, wait for the page.

Waiting polls with page.evaluate: Playwright's wait_for_function needs 'unsafe-eval', which our
Content-Security-Policy (rightly) refuses.
"""

from __future__ import annotations

import time
from typing import Any

from tests.conftest import PASSWORD


def sign_in(page: Any, base: str, username: str = "alice") -> Any:
    page.goto(base + "/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.locator("main button[type=submit]").click()
    page.wait_for_url(base + "/")
    return page


def wait_js(page: Any, expression: str, timeout: float = 20.0) -> Any:
    """Poll a JS expression until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(expression)
        if value:
            return value
        page.wait_for_timeout(25)
    raise AssertionError(f"timed out waiting for {expression}")


def start_chat(page: Any, text: str, model: str = "llama-3.2-3b") -> None:
    """On the new-chat page: pick the model, type, Enter; wait for the conversation's page."""
    page.select_option("#id_model", model)
    page.fill("#id_text", text)
    page.press("#id_text", "Enter")
    page.wait_for_url("**/c/**")


def last_answer(page: Any) -> Any:
    return page.locator(".msg-assistant").last


def wait_status(page: Any, status: str, timeout: float = 20_000) -> None:
    page.wait_for_selector(f'.msg-assistant:last-of-type[data-status="{status}"]',
                           timeout=timeout)
