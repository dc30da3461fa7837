"""Images in the composer as a person adds them: file picker, paste, drag and drop.

Headless Chromium against a daphne process of this module's own (its MEDIA_ROOT is a temporary
folder, and it runs answers in-process so the test does not depend on a Celery worker). The
vision model is Cloudflare's, through the emulator. Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from conversations.models import Attachment, Message
from tests.conftest import ARTIFACTS, ServerProcess, child_env, screenshot
from tests.e2e.browser import sign_in, wait_js
from tests.images import image_corpus as corpus

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

VISION = "llama-3.2-11b-vision"


class MediaServer(ServerProcess):
    media: Path


@pytest.fixture(scope="module")
def vision_app(django_db_setup: Any, django_db_blocker: Any,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediaServer]:
    media = tmp_path_factory.mktemp("browser-media")
    with django_db_blocker.unblock():
        env = child_env(MEDIA_ROOT=str(media), REDIS_URL="")
    server = MediaServer(env, ARTIFACTS / "logs" / "daphne-vision-browser.log")
    server.media = media
    yield server
    server.stop()


@pytest.fixture
def chat(vision_app: MediaServer, emulated: Any, page: Any, owner: Any, settings: Any) -> Any:
    settings.MEDIA_ROOT = vision_app.media
    sign_in(page, vision_app.url)
    return page




UPLOADED = "document.querySelector('[data-thumbs] .thumb:not(.uploading) input[name=attachments]')"


def wait_uploaded(page: Any) -> str:
    wait_js(page, f"{UPLOADED} !== null")
    return str(page.evaluate(f"{UPLOADED}.value"))


def wait_answer(page: Any, count: int) -> Any:
    page.wait_for_selector(f".msg-assistant >> nth={count - 1}")
    page.wait_for_selector('.msg-assistant:last-of-type[data-status="complete"]', timeout=20_000)
    return page.locator(".msg-assistant").last


def coloured_png(colour: tuple[int, int, int]) -> bytes:
    return corpus.encode(Image.new("RGBA", (64, 48), (*colour, 255)), "PNG")


# The same File/DataTransfer a real paste or drop hands to the page.
SYNTHETIC_EVENT = """([selector, b64, name, type, kind]) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const data = new DataTransfer();
    data.items.add(new File([bytes], name, { type }));
    const target = document.querySelector(selector);
    const init = { bubbles: true, cancelable: true };
    if (kind === "paste") {
        const event = new ClipboardEvent("paste", { ...init, clipboardData: data });
        target.dispatchEvent(event);
        return event.defaultPrevented;
    }
    const over = new DragEvent("dragover", { ...init, dataTransfer: data });
    target.dispatchEvent(over);
    const highlighted = target.classList.contains("dragging");
    const drop = new DragEvent("drop", { ...init, dataTransfer: data });
    target.dispatchEvent(drop);
    return over.defaultPrevented && highlighted && drop.defaultPrevented
        && !target.classList.contains("dragging");
}"""


def synthetic(page: Any, kind: str, selector: str, data: bytes, name: str, mime: str) -> bool:
    encoded = base64.b64encode(data).decode("ascii")
    return bool(page.evaluate(SYNTHETIC_EVENT, [selector, encoded, name, mime, kind]))


def sent_images(emulated: Any) -> list[bytes]:
    return [bytes(r.json["image"]) for r in emulated.requests
            if r.vendor == "cloudflare" and r.endpoint == "model" and r.status == 200
            and isinstance(r.json, dict) and "image" in r.json]


def test_pick_paste_and_drop_images_and_get_streamed_answers(chat: Any, emulated: Any) -> None:
    page = chat
    page.select_option("#id_model", VISION)
    assert page.locator("[data-attach-button]").is_visible()
    page.set_input_files("[data-file-input]", files=[{
        "name": "holiday.jpg", "mimeType": "image/jpeg",
        "buffer": corpus.jpeg_with_every_leak(orientation=6)}])
    picked = wait_uploaded(page)
    page.fill("#id_text", "What is in the picture? [[emu:tokens n=40 rate=40]]")
    page.keyboard.press("Enter")
    page.wait_for_url("**/c/**")
    lengths = set()
    while page.locator('.msg-assistant:last-of-type[data-status="complete"]').count() == 0:
        lengths.add(len(page.locator(".msg-assistant").last.inner_text()))
        page.wait_for_timeout(100)
    assert len(lengths) >= 3, "the answer should appear progressively"
    answer = wait_answer(page, 1)
    assert "Echo: What is in the picture?" in answer.inner_text()
    wait_js(page, "[...document.querySelectorAll('.msg-user .msg-images img')]"
                  ".every((img) => img.complete && img.naturalWidth === 20)")

    synthetic_cases = [
        ("paste", "#composer-text", coloured_png(corpus.GREEN), "clipboard.png"),
        ("drop", "#pane", coloured_png(corpus.BLUE), "dropped.png"),
    ]
    ids = [picked]
    for count, (kind, selector, data, name) in enumerate(synthetic_cases, start=2):
        assert synthetic(page, kind, selector, data, name, "image/png"), kind
        ids.append(wait_uploaded(page))
        page.fill("#composer-text", f"And this {kind}? [[emu:tokens n=12]]")
        page.keyboard.press("Enter")
        answer = wait_answer(page, count)
        # Only the newest image is sent; earlier image turns keep their text, marked.
        assert "Echo: User: [image] What is in the picture?" in answer.inner_text()
        # Cloudflare's vision call takes the history as one transcript; the new turn ends it.
        last = emulated.requests[-1]
        assert last.json["prompt"].endswith(f"User: And this {kind}? [[emu:tokens n=12]]")
        assert last.image_bytes and last.status == 200
        assert page.locator("[data-thumbs] .thumb").count() == 0  # the composer is clear again
    wait_js(page, "document.querySelectorAll('.msg-user .msg-images img').length === 3 && "
                  "[...document.querySelectorAll('.msg-user .msg-images img')]"
                  ".every((img) => img.complete && img.naturalWidth > 0)")
    screenshot(page, "vision-chat")

    attached = {str(a.pk): a for a in Attachment.objects.filter(message__isnull=False)}
    assert set(attached) == set(ids)
    assert [attached[i].display_name for i in ids] == ["holiday.jpg", "clipboard.png",
                                                       "dropped.png"]
    sent = sent_images(emulated)
    assert len(sent) == 3
    assert all(b"GPS" not in data and b"Exif" not in data for data in sent)
    assert Message.objects.filter(role="assistant", status="complete").count() == 3
    assert page.console_errors == []


def test_a_refused_file_shows_the_servers_reason_and_attaches_nothing(
    chat: Any, emulated: Any
) -> None:
    page = chat
    page.select_option("#id_model", VISION)
    assert synthetic(page, "paste", "#id_text", corpus.svg_with_script(), "evil.png",
                     "image/png")
    wait_js(page, "document.querySelector('[data-attach-note].attach-error') !== null")
    note = page.locator("[data-attach-note]").inner_text()
    assert note.startswith("This file is not a supported image.")
    assert page.locator("[data-thumbs] .thumb").count() == 0
    assert Attachment.objects.count() == 0
    screenshot(page, "vision-refused")
    page.select_option("#id_model", "llama-3.2-3b")
    assert page.locator("[data-attach-button]").is_hidden()
    assert "reads text only" in page.locator("[data-attach-note]").inner_text()
    assert emulated.requests == []


def test_the_picker_opens_from_the_keyboard(chat: Any) -> None:
    page = chat
    choosers: list[Any] = []

    def chosen(chooser: Any) -> None:
        choosers.append(chooser)

    # Listen first: Playwright turns file-chooser interception on asynchronously.
    page.on("filechooser", chosen)
    page.select_option("#id_model", VISION)
    page.focus("#id_model")
    for _ in range(20):  # Tab along the form until the attach button has focus
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement?.hasAttribute('data-attach-button')"):
            break
    else:
        raise AssertionError("the attach button cannot be reached with Tab")
    page.keyboard.press("Enter")
    deadline = time.monotonic() + 10
    while not choosers and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert choosers, "Enter on the attach button should open the file chooser"
    choosers[0].set_files(files=[{"name": "keys.png", "mimeType": "image/png",
                                  "buffer": coloured_png(corpus.RED)}])
    wait_uploaded(page)
    assert Attachment.objects.get().display_name == "keys.png"


def test_an_image_removed_while_it_uploads_is_discarded_on_the_server(chat: Any) -> None:
    page = chat
    page.select_option("#id_model", VISION)
    held: list[Any] = []

    def hold(route: Any) -> None:  # keep the upload in flight until the image is removed
        held.append(route)

    page.route("**/uploads/", hold)
    assert synthetic(page, "paste", "#id_text", coloured_png(corpus.RED), "oops.png",
                     "image/png")
    while not held:
        page.wait_for_timeout(20)
    page.click("[data-thumbs] .thumb.uploading .thumb-remove")
    assert page.locator("[data-thumbs] .thumb").count() == 0
    with page.expect_response("**/discard/") as discarded:
        held[0].continue_()
    assert discarded.value.status == 200
    assert Attachment.objects.count() == 0
    assert page.evaluate("document.querySelector('[data-attach-note]').textContent") \
        .startswith("Up to 1 image")


def test_a_file_dropped_beside_the_drop_zone_does_not_replace_the_page(chat: Any) -> None:
    page = chat
    page.select_option("#id_model", VISION)
    page.fill("#id_text", "typed text that must survive")
    assert page.evaluate("""() => {
        const data = new DataTransfer();
        data.items.add(new File(["x"], "x.png", { type: "image/png" }));
        const target = document.querySelector(".sidebar, aside, header") || document.body;
        const init = { bubbles: true, cancelable: true, dataTransfer: data };
        const over = new DragEvent("dragover", init);
        const drop = new DragEvent("drop", init);
        target.dispatchEvent(over);
        target.dispatchEvent(drop);
        return !document.getElementById("pane").contains(target)
            && over.defaultPrevented && drop.defaultPrevented;
    }""")
    assert page.input_value("#id_text") == "typed text that must survive"
    assert Attachment.objects.count() == 0
