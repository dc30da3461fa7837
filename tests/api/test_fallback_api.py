"""Fallback between backends through /v1: only with `"fallback": true` in the body; `model` in the
answer names the model that answered, and the ledger row is that model's. The openai package
sends the opt-in through `extra_body`. Over real sockets: daphne and the emulators.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from conversations.models import UsageRecord
from providers.emulators import Fault
from providers.models import ModelFallback
from tests.support import model

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = [{"role": "user", "content": "Tell me about llamas"}]


@pytest.fixture
def falls_back(emulated: Any) -> Any:
    ModelFallback.objects.create(model=model("llama-3.2-3b"), fallback=model("llama-3-70b"))
    emulated.script("cloudflare", Fault("429-before", code=3040), times=None)
    return emulated


def _sent(emulated: Any, vendor: str) -> str:
    calls = [r for r in emulated.requests if r.vendor == vendor and r.endpoint == "model"]
    return calls[-1].sent_text if calls else ""


def test_with_the_opt_in_the_fallback_answers_and_model_names_it(falls_back: Any,
                                                                  api: Any) -> None:
    raw = api.chat.completions.with_raw_response.create(
        model="llama-3.2-3b", messages=PROMPT, extra_body={"fallback": True})
    assert raw.headers["x-fallback-from"] == "llama-3.2-3b"
    reply = raw.parse()
    assert reply.model == "llama-3-70b"
    assert reply.choices[0].message.content == _sent(falls_back, "qianfan")
    row = UsageRecord.objects.get(source=UsageRecord.Source.API)
    assert row.model.slug == "llama-3-70b" and row.status == "complete"
    assert row.completion_tokens > 0


def test_with_the_opt_in_a_stream_names_the_answering_model_in_every_chunk(
        falls_back: Any, api: Any) -> None:
    raw = api.chat.completions.with_raw_response.create(
        model="llama-3.2-3b", messages=PROMPT, stream=True, extra_body={"fallback": True})
    assert raw.headers["x-fallback-from"] == "llama-3.2-3b"
    chunks = list(raw.parse())
    assert {c.model for c in chunks} == {"llama-3-70b"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and text == _sent(falls_back, "qianfan")
    assert UsageRecord.objects.get(source=UsageRecord.Source.API).model.slug == "llama-3-70b"


@pytest.mark.parametrize("body", [{}, {"fallback": False}])
def test_without_the_opt_in_the_providers_error_is_the_answer(falls_back: Any, api: Any,
                                                               body: dict[str, Any]) -> None:
    with pytest.raises(openai.RateLimitError) as refused:
        api.chat.completions.create(model="llama-3.2-3b", messages=PROMPT, extra_body=body)
    assert "x-fallback-from" not in refused.value.response.headers
    assert _sent(falls_back, "qianfan") == ""
    row = UsageRecord.objects.get(source=UsageRecord.Source.API)
    assert row.model.slug == "llama-3.2-3b" and row.error_code == "rate_limited"


def test_a_content_filter_refusal_is_not_sent_to_another_backend(emulated: Any,
                                                                  api: Any) -> None:
    ModelFallback.objects.create(model=model("llama-3-70b"), fallback=model("llama-3.2-3b"))
    emulated.script("qianfan", Fault("content-filter-after", n=0), times=None)
    with pytest.raises(openai.APIStatusError) as refused:
        api.chat.completions.create(model="llama-3-70b", messages=PROMPT,
                                    extra_body={"fallback": True})
    assert refused.value.status_code == 400
    assert _sent(emulated, "cloudflare") == ""


def test_a_failure_after_the_first_token_is_not_retried_elsewhere(emulated: Any,
                                                                  api: Any) -> None:
    # Qianfan first: the server process's breaker may hold Cloudflare's earlier failures.
    ModelFallback.objects.create(model=model("llama-3-70b"), fallback=model("llama-3.2-3b"))
    emulated.script("qianfan", Fault("error-after", n=3), times=None)
    text = ""
    with pytest.raises(openai.APIError):
        for chunk in api.chat.completions.create(model="llama-3-70b", messages=PROMPT,
                                                 stream=True, extra_body={"fallback": True}):
            assert chunk.model == "llama-3-70b"
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert text and text == _sent(emulated, "qianfan")
    assert _sent(emulated, "cloudflare") == ""


def test_a_fallback_value_that_is_not_a_boolean_is_refused(emulated: Any, api_server: Any,
                                                            owner: Any, make_token: Any) -> None:
    response = httpx.post(f"{api_server.url}/v1/chat/completions", json={
        "model": "llama-3.2-3b", "messages": PROMPT, "fallback": "yes"},
        headers={"Authorization": f"Bearer {make_token(owner)}"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_type", "fallback")
    assert not UsageRecord.objects.exists()


def test_with_the_opt_in_a_provider_that_keeps_failing_is_not_asked_again(
        falls_back: Any, api: Any) -> None:
    provider = model("llama-3.2-3b").provider
    provider.options = {**provider.options, "max_attempts": 1}
    provider.save()
    for _n in range(4):  # three failures open the server's breaker (it may be open already)
        reply = api.chat.completions.create(model="llama-3.2-3b", messages=PROMPT,
                                            extra_body={"fallback": True})
        assert reply.model == "llama-3-70b"
    asked = len([r for r in falls_back.requests if r.vendor == "cloudflare"])
    reply = api.chat.completions.create(model="llama-3.2-3b", messages=PROMPT,
                                        extra_body={"fallback": True})
    assert reply.model == "llama-3-70b"
    assert len([r for r in falls_back.requests if r.vendor == "cloudflare"]) == asked
