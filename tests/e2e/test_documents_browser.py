"""Documents in the composer as a person adds them: pick a 40-page PDF, ask about page 31, see
the answer quote it and the line saying which pages were used; drop a Markdown file.

Headless Chromium against a daphne process of this module's own (its MEDIA_ROOT is a temporary
folder; extraction and answers run in-process). Qianfan's Llama 3 70B (4,800 characters) is
too small for the whole report, so the passages are chosen by full-text ranking.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conversations.models import Document
from tests.conftest import ARTIFACTS, ServerProcess, child_env, screenshot
from tests.documents.pdfs import report
from tests.e2e.browser import sign_in, wait_js

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

UPLOADED = ("document.querySelector('[data-doc-chips] .doc-chip:not(.uploading) "
            "input[name=documents]')")


USED_31 = "Used pages 30\u201332 of report.pdf"  # the page asked about and its neighbours


class MediaServer(ServerProcess):
    media: Path


@pytest.fixture(scope="module")
def documents_app(django_db_setup: Any, django_db_blocker: Any,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediaServer]:
    media = tmp_path_factory.mktemp("browser-documents")
    with django_db_blocker.unblock():
        env = child_env(MEDIA_ROOT=str(media), REDIS_URL="")
    server = MediaServer(env, ARTIFACTS / "logs" / "daphne-documents-browser.log")
    server.media = media
    yield server
    server.stop()


@pytest.fixture
def chat(documents_app: MediaServer, emulated: Any, page: Any, owner: Any, settings: Any) -> Any:
    settings.MEDIA_ROOT = documents_app.media
    sign_in(page, documents_app.url)
    return page


DROP = """([b64, name]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const data = new DataTransfer();
    data.items.add(new File([bytes], name, { type: "" }));
    const target = document.querySelector("#pane") || document.querySelector("form");
    const init = { bubbles: true, cancelable: true, dataTransfer: data };
    target.dispatchEvent(new DragEvent("dragover", init));
    target.dispatchEvent(new DragEvent("drop", init));
}"""


def test_a_user_drops_a_40_page_pdf_asks_about_page_31_and_sees_it_quoted(
        chat: Any, emulated: Any, documents_app: MediaServer) -> None:
    page = chat
    page.select_option("#id_model", "llama-3-70b")
    page.set_input_files("[data-document-input]", files=[{
        "name": "report.pdf", "mimeType": "application/pdf", "buffer": report(40)}])
    wait_js(page, f"{UPLOADED} !== null")
    wait_js(page, "document.querySelector('[data-doc-chips] .doc-chip').textContent"
                  ".includes('40 pages')")
    screenshot(page, "documents-composer")
    page.fill("#id_text", "What does page 31 say?")
    page.keyboard.press("Enter")
    page.wait_for_url("**/c/**")
    page.wait_for_selector('.msg-assistant[data-status="complete"]', timeout=20_000)
    wait_js(page, "document.querySelector('[data-documents-used]') !== null")
    answer = page.locator(".msg-assistant").last
    assert "page 31" in answer.inner_text()
    assert USED_31 in answer.inner_text()
    chip = page.locator(".msg-user .doc-chip").first
    assert "report.pdf" in chip.inner_text() and "40 pages" in chip.inner_text()
    assert page.locator("[data-doc-chips] .doc-chip").count() == 0  # the composer is clear
    screenshot(page, "documents-answer")
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    page.wait_for_selector("[data-documents-used]")
    screenshot(page, "documents-answer-phone")
    page.set_viewport_size({"width": 1280, "height": 800})

    # After a reload: the same chip and the same line.
    page.reload()
    assert USED_31 in page.locator(".msg-assistant").last.inner_text()

    # In Chinese: the same line, translated.
    page.context.add_cookies([{"name": "django_language", "value": "zh-hans",
                               "url": documents_app.url}])
    page.reload()
    used_zh = page.locator(".msg-assistant").last.inner_text()
    assert "已使用 report.pdf 的第 30\u201332 页" in used_zh
    assert "40 页" in page.locator(".msg-user .doc-chip").first.inner_text()
    screenshot(page, "documents-answer-zh")
    page.context.add_cookies([{"name": "django_language", "value": "en",
                               "url": documents_app.url}])
    page.reload()

    # A Markdown file dropped on the page goes to the documents, not the images.
    notes = b"# Notes\n\n<b>not bold</b> The llama is called Kuzco.\n"
    page.evaluate(DROP, [base64.b64encode(notes).decode("ascii"), "notes.md"])
    wait_js(page, f"{UPLOADED} !== null")
    page.fill("#composer-text", "What is the llama called?")
    page.keyboard.press("Enter")
    wait_js(page, "document.querySelectorAll('.msg-assistant[data-status=\"complete\"]')"
                  ".length === 2", timeout=20)
    wait_js(page, "document.querySelectorAll('[data-documents-used]').length === 2")
    used = page.locator("[data-documents-used]").last.inner_text()
    assert "notes.md" in used
    assert page.locator(".msg-user b").count() == 0  # never rendered as HTML
    assert Document.objects.filter(status="ready").count() == 2
    assert page.console_errors == []
