"""Fallback between backends on the web page: a provider that fails before its first token with
a curable kind hands the same answer to the model's next fallback; other failures do not; a
provider that keeps failing is skipped for a while (the circuit breaker).

Every test posts through the real view to the emulators over real sockets; without a server
loop the answer runs inline, so it is finished when the POST returns.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.utils import translation

from conversations.answers import fallback
from conversations.chat import services
from conversations.models import Message, MessageStatus, UsageRecord
from providers import breaker
from providers.emulators import Fault
from providers.fallbacks import refusal
from providers.models import ModelConfig, ModelFallback
from tests.support import model, post_message, signed_in

PROMPT = "Tell me about llamas"


@pytest.fixture(autouse=True)
def answers_in_process(settings: Any) -> None:
    """Vision answers run in this process (the embedded configuration) whatever REDIS_URL
    says: with Redis they would wait for a Celery worker these tests do not start."""
    settings.REDIS_URL = ""


def _falls_back(slug: str, *to: str) -> ModelConfig:
    first = model(slug)
    for position, other in enumerate(to):
        ModelFallback.objects.create(model=first, fallback=model(other), position=position)
    return first


def _ask(user: Any, slug: str, text: str = PROMPT, client: Client | None = None
         ) -> tuple[Any, Message]:
    conversation = services.conversation_create(user, model=model(slug))
    response = post_message(client or signed_in(user), conversation, text)
    assert response.status_code == 201, response.content
    return conversation, Message.objects.select_related("model", "fallback_from").get(
        pk=response.json()["assistant"]["id"])


def _calls(emulated: Any, vendor: str) -> list[Any]:
    return [r for r in emulated.requests if r.vendor == vendor and r.endpoint == "model"]


def test_cloudflare_over_capacity_before_the_first_token_is_answered_by_qianfan(
        emulated: Any, owner: Any) -> None:
    _falls_back("llama-3.2-3b", "llama-3-70b")
    emulated.script("cloudflare", Fault("429-before", code=3040), times=None)

    conversation, answer = _ask(owner, "llama-3.2-3b")

    assert answer.status == MessageStatus.COMPLETE and answer.error_code == ""
    assert answer.model.slug == "llama-3-70b"
    assert answer.fallback_from.slug == "llama-3.2-3b"
    assert answer.fallback_reason == "rate_limited"
    assert answer.content and answer.content == _calls(emulated, "qianfan")[-1].sent_text
    # Qianfan was sent the same conversation, shaped for it.
    assert PROMPT in str(_calls(emulated, "qianfan")[-1].json)
    # Usage and cost go to the model that answered.
    row = UsageRecord.objects.get(message=answer)
    assert row.model.slug == "llama-3-70b" and row.status == MessageStatus.COMPLETE
    assert row.completion_tokens > 0
    assert row.cost == answer.model.cost(row.prompt_tokens, row.completion_tokens)
    # The page says so in one line, in English and in Chinese, after a reload.
    page = signed_in(owner).get(f"/c/{conversation.pk}/").content.decode()
    assert ("Cloudflare Workers AI is over capacity; answered by Meta-Llama-3-70B-Instruct on "
            "Baidu Qianfan.") in page
    chinese = signed_in(owner).get(f"/c/{conversation.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans")
    with translation.override("zh-hans"):
        line = fallback.notice(answer)
    assert "Meta-Llama-3-70B-Instruct" in line and "answered by" not in line
    assert line in chinese.content.decode()


@pytest.mark.parametrize(("fault", "reason"), [
    (Fault("500-before"), "unavailable"),
    (Fault("free-tier-before"), "quota_exhausted"),
    (Fault("auth-before"), "auth"),
])
def test_other_curable_failures_fall_back_too(emulated: Any, owner: Any, fault: Fault,
                                             reason: str) -> None:
    _falls_back("llama-3.2-3b", "llama-3-70b")
    emulated.script("cloudflare", fault, times=None)
    _conversation, answer = _ask(owner, "llama-3.2-3b")
    assert (answer.status, answer.model.slug, answer.fallback_reason) == (
        MessageStatus.COMPLETE, "llama-3-70b", reason)


def test_a_content_filter_refusal_is_not_sent_to_another_backend(emulated: Any,
                                                                  owner: Any) -> None:
    _falls_back("llama-3-70b", "llama-3.2-3b")
    emulated.script("qianfan", Fault("content-filter-after", n=0), times=1)
    _conversation, answer = _ask(owner, "llama-3-70b")
    assert answer.model.slug == "llama-3-70b" and answer.fallback_from is None
    assert answer.error_code == "content_filtered"
    assert _calls(emulated, "cloudflare") == []


def test_a_failure_after_the_first_token_keeps_the_partial_text_and_does_not_switch(
        emulated: Any, owner: Any) -> None:
    _falls_back("llama-3.2-3b", "llama-3-70b")
    emulated.script("cloudflare", Fault("error-after", n=3), times=None)
    _conversation, answer = _ask(owner, "llama-3.2-3b")
    assert answer.status == MessageStatus.FAILED and answer.error_code == "rate_limited"
    assert answer.content and answer.content == _calls(emulated, "cloudflare")[-1].sent_text
    assert answer.model.slug == "llama-3.2-3b" and answer.fallback_from is None
    assert _calls(emulated, "qianfan") == []


def test_without_fallbacks_the_error_stands(emulated: Any, owner: Any) -> None:
    emulated.script("cloudflare", Fault("429-before", code=3040), times=None)
    _conversation, answer = _ask(owner, "llama-3.2-3b")
    assert answer.status == MessageStatus.FAILED and answer.error_code == "rate_limited"
    assert answer.fallback_from is None


def test_when_every_fallback_fails_the_last_error_is_shown(emulated: Any, owner: Any) -> None:
    _falls_back("llama-3.2-3b", "llama-3-70b")
    emulated.script("cloudflare", Fault("429-before", code=3040), times=None)
    emulated.script("qianfan", Fault("500-before"), times=None)
    _conversation, answer = _ask(owner, "llama-3.2-3b")
    assert answer.status == MessageStatus.FAILED and answer.error_code == "unavailable"
    assert answer.model.slug == "llama-3-70b"  # the last model tried wrote (nothing)
    assert UsageRecord.objects.get(message=answer).model.slug == "llama-3-70b"


def test_a_fallback_the_user_may_not_use_is_not_tried(emulated: Any, owner: Any,
                                                      django_user_model: Any) -> None:
    from django.contrib.auth.models import Group

    _falls_back("llama-3.2-3b", "llama-3-70b")
    staff_only = Group.objects.create(name="staff only")
    model("llama-3-70b").groups.add(staff_only)
    emulated.script("cloudflare", Fault("429-before", code=3040), times=None)
    _conversation, answer = _ask(owner, "llama-3.2-3b")
    assert answer.status == MessageStatus.FAILED and answer.fallback_from is None
    assert _calls(emulated, "qianfan") == []


def test_a_fallback_that_refuses_the_history_is_passed_over(emulated: Any, owner: Any) -> None:
    # DashScope's vision model needs an image; this vision conversation has none.
    _falls_back("llama-3.2-11b-vision", "llama-3.2-90b-vision")
    emulated.script("cloudflare", Fault("429-before", code=3040), times=None)
    _conversation, answer = _ask(owner, "llama-3.2-11b-vision")
    assert answer.status == MessageStatus.FAILED and answer.error_code == "rate_limited"
    assert answer.model.slug == "llama-3.2-11b-vision" and answer.fallback_from is None
    assert _calls(emulated, "dashscope") == []


def test_a_text_model_never_falls_back_to_a_vision_model_even_if_a_row_says_so(
        emulated: Any, owner: Any) -> None:
    _falls_back("llama-3.2-3b", "llama-3.2-11b-vision", "llama-3-70b")  # written past the admin
    emulated.script("cloudflare", Fault("429-before", code=3040), times=None)
    _conversation, answer = _ask(owner, "llama-3.2-3b")
    assert answer.model.slug == "llama-3-70b"
    paths = [r.path for r in _calls(emulated, "cloudflare")]
    assert paths and not any("vision" in path for path in paths)


def test_a_provider_that_keeps_failing_is_skipped_for_a_cool_down(emulated: Any, owner: Any,
                                                                 settings: Any) -> None:
    settings.FALLBACK_BREAKER_FAILURES = 3
    _falls_back("llama-3.2-3b", "llama-3-70b")
    emulated.script("cloudflare", Fault("500-before"), times=None)
    provider = model("llama-3.2-3b").provider
    provider.options = {**provider.options, "max_attempts": 1}  # one call per answer
    provider.save()

    for _turn in range(3):
        _conversation, answer = _ask(owner, "llama-3.2-3b")
        assert answer.model.slug == "llama-3-70b"
    assert len(_calls(emulated, "cloudflare")) == 3
    state = breaker.state("cloudflare")
    assert state.open and state.last_error == "unavailable" and state.seconds_left > 0

    _conversation, answer = _ask(owner, "llama-3.2-3b")
    assert len(_calls(emulated, "cloudflare")) == 3  # skipped: not asked again
    assert (answer.status, answer.model.slug, answer.fallback_reason) == (
        MessageStatus.COMPLETE, "llama-3-70b", "unavailable")

    # The cool-down over (or an admin fixed it): the provider is asked again and closes it.
    breaker.reset("cloudflare")
    emulated.reset()
    _conversation, answer = _ask(owner, "llama-3.2-3b")
    assert answer.model.slug == "llama-3.2-3b" and answer.fallback_from is None
    assert not breaker.state("cloudflare").open


def test_an_open_breaker_with_no_fallback_still_tries_the_model(emulated: Any,
                                                                owner: Any) -> None:
    for _n in range(3):
        breaker.record_failure("cloudflare", "unavailable")
    assert breaker.is_open("cloudflare")
    _conversation, answer = _ask(owner, "llama-3.2-3b")
    assert answer.status == MessageStatus.COMPLETE and answer.model.slug == "llama-3.2-3b"
    assert not breaker.is_open("cloudflare")  # it answered: closed again


def test_a_vision_conversation_falls_back_only_to_a_vision_model(emulated: Any) -> None:
    text, vision, vision_too = (model("llama-3.2-3b"), model("llama-3.2-11b-vision"),
                                model("llama-3.2-90b-vision"))
    assert refusal(vision, vision_too) == ""
    assert refusal(text, model("llama-3-70b")) == ""
    assert "images" in refusal(vision, text)
    assert "text model" in refusal(text, vision)
    assert refusal(text, text)


def test_the_admin_orders_fallbacks_and_refuses_text_for_vision(emulated: Any,
                                                                admin_user: Any) -> None:
    vision, text, vision_too = (model("llama-3.2-11b-vision"), model("llama-3.2-3b"),
                                model("llama-3.2-90b-vision"))
    client = signed_in(admin_user)
    page = client.get(f"/admin/providers/modelconfig/{vision.pk}/change/").content.decode()
    add = "/admin/providers/modelfallback/add/"
    assert "add a fallback" in page and f"{add}?model={vision.pk}" in page
    assert client.get(f"{add}?model={vision.pk}").status_code == 200

    refused = client.post(add, {"model": vision.pk, "fallback": text.pk, "position": 0})
    assert refused.status_code == 200  # the form again, with the reason
    assert "reads images: its fallback must read images too" in refused.content.decode()
    assert not ModelFallback.objects.exists()
    refused = client.post(add, {"model": text.pk, "fallback": vision.pk, "position": 0})
    assert "is a text model: its fallback must be a text model" in refused.content.decode()
    refused = client.post(add, {"model": text.pk, "fallback": text.pk, "position": 0})
    assert "cannot be its own fallback" in refused.content.decode()
    assert not ModelFallback.objects.exists()

    assert client.post(add, {"model": vision.pk, "fallback": vision_too.pk,
                             "position": 0}).status_code == 302
    assert client.post(add, {"model": text.pk, "fallback": model("llama-3-70b").pk,
                             "position": 1}).status_code == 302
    assert list(ModelFallback.objects.filter(model=vision).values_list(
        "fallback__slug", flat=True)) == ["llama-3.2-90b-vision"]
    page = client.get(f"/admin/providers/modelconfig/{text.pk}/change/").content.decode()
    assert "Meta-Llama-3-70B-Instruct (" in page
    listing = client.get("/admin/providers/modelfallback/").content.decode()
    assert "Llama 3.2 90B Vision Instruct" in listing


def test_the_providers_admin_shows_an_open_breaker(emulated: Any, admin_user: Any) -> None:
    for _n in range(3):
        breaker.record_failure("cloudflare", "rate_limited")
    page = signed_in(admin_user).get("/admin/providers/provider/").content.decode()
    assert "circuit breaker" in page.lower()
    assert "answers go to their fallback models" in page


def test_the_providers_page_shows_the_failing_provider_and_its_breaker_after_a_fallback(
        emulated: Any, owner: Any, admin_user: Any, settings: Any) -> None:
    from providers.models import Provider

    settings.FALLBACK_BREAKER_FAILURES = 1
    _falls_back("llama-3.2-3b", "llama-3-70b")
    emulated.script("cloudflare", Fault("429-before", code=3040), times=None)
    _conversation, answer = _ask(owner, "llama-3.2-3b")
    assert answer.model.slug == "llama-3-70b"  # Qianfan answered ...
    cloudflare = Provider.objects.get(kind="cloudflare")
    assert cloudflare.failing_since is not None  # ... and Cloudflare is still shown failing
    page = signed_in(admin_user).get("/manage/providers/").content.decode()
    assert "data-circuit-open" in page and "Circuit breaker" in page
    breaker.reset("cloudflare")
