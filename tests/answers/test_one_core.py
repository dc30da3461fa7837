"""One answer core behind both doors: the same provider fault script, sent once through the web
page and once through /v1, ends the same way: the same text (what the emulator wrote to the
socket), the same state and error code, and the same kind of ledger row.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from conversations.chat import services
from conversations.models import Message, MessageStatus, UsageRecord
from providers.emulators import Fault
from tests.api.conftest import openai_client
from tests.support import model, post_message, signed_in

PROMPT = "Tell me about llamas"

# (vendor, model, fault script, the state both doors must end in, its error code)
SCRIPTS = [
    ("cloudflare", "llama-3.2-3b", None, MessageStatus.COMPLETE, ""),
    ("qianfan", "llama-3-70b", None, MessageStatus.COMPLETE, ""),
    ("cloudflare", "llama-3.2-3b", Fault("error-after", n=3), MessageStatus.FAILED,
     "rate_limited"),
    ("qianfan", "llama-3-70b", Fault("error-after", n=3), MessageStatus.FAILED, "unavailable"),
    ("cloudflare", "llama-3.2-3b", Fault("drop-after", n=3), MessageStatus.FAILED, "truncated"),
    ("qianfan", "llama-3-70b", Fault("no-terminator"), MessageStatus.FAILED, "truncated"),
    ("cloudflare", "llama-3.2-3b", "500-before", MessageStatus.FAILED, "unavailable"),
    ("cloudflare", "llama-3.2-3b", "auth-before", MessageStatus.FAILED, "auth"),
    ("qianfan", "llama-3-70b", Fault("content-filter-after", n=2), MessageStatus.COMPLETE,
     "content_filtered"),
]


def _web(emulated: Any, owner: Any, slug: str) -> tuple[str, Message, UsageRecord]:
    conversation = services.conversation_create(owner, model=model(slug))
    response = post_message(signed_in(owner), conversation, PROMPT)
    assert response.status_code == 201, response.content
    answer = Message.objects.get(pk=response.json()["assistant"]["id"])
    return answer.content, answer, UsageRecord.objects.get(message=answer)


def _api(server: Any, secret: str, slug: str) -> tuple[str, UsageRecord]:
    client = openai_client(server, secret)
    text = ""
    try:
        for chunk in client.chat.completions.create(
                model=slug, messages=[{"role": "user", "content": PROMPT}], stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
    except openai.APIError:
        pass  # before the first chunk (an HTTP error) or in the stream: the ledger tells
    return text, UsageRecord.objects.get(source=UsageRecord.Source.API)


def _sent(emulated: Any, vendor: str) -> str:
    calls = [r for r in emulated.requests if r.vendor == vendor and r.endpoint == "model"]
    return calls[-1].sent_text if calls else ""


@pytest.mark.parametrize(("vendor", "slug", "fault", "status", "code"), SCRIPTS)
def test_the_web_page_and_the_api_end_an_answer_the_same_way(
    emulated: Any, api_server: Any, owner: Any, make_token: Any, vendor: str, slug: str,
    fault: Any, status: str, code: str
) -> None:
    if fault is not None:
        emulated.script(vendor, fault, times=None)
    web_text, answer, web_row = _web(emulated, owner, slug)
    web_sent = _sent(emulated, vendor)
    api_text, api_row = _api(api_server, make_token(owner), slug)
    api_sent = _sent(emulated, vendor)

    # Nothing the provider sent is lost, on either door.
    assert web_text == web_sent
    assert api_text == api_sent
    assert web_text == api_text  # one script, one text
    # The same ending, the same error code, recorded the same way in the ledger.
    assert answer.status == status and answer.error_code == code
    assert (web_row.status, web_row.error_code) == (api_row.status, api_row.error_code) == (
        status, code)
    assert web_row.finished_at is not None and api_row.finished_at is not None
    # Usage: the provider's figures, or the same estimate when it gave none.
    assert (web_row.prompt_tokens, web_row.completion_tokens) == (
        api_row.prompt_tokens, api_row.completion_tokens)
    if web_text:
        assert web_row.completion_tokens > 0


def test_a_nul_from_the_model_reaches_both_doors_as_a_replacement_character(
    emulated: Any, api_server: Any, owner: Any, make_token: Any
) -> None:
    # PostgreSQL refuses NUL in text: kept as it came, the answer could not be saved at all.
    emulated.script("cloudflare", "control-chars", times=None)
    web_text, answer, _row = _web(emulated, owner, "llama-3.2-3b")
    sent = _sent(emulated, "cloudflare")
    api_text, _api_row = _api(api_server, make_token(owner), "llama-3.2-3b")
    assert "\x00" in sent
    expected = sent.replace("\x00", "\ufffd")
    assert answer.status == MessageStatus.COMPLETE
    assert web_text == api_text == expected
    assert "\x07" in web_text  # other control characters are the page's to escape
