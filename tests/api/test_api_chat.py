"""Chat completions through the official openai package, against daphne and the emulators.

The oracle for answer text is the emulator's record of what it actually wrote to the socket
(`sent_text` of the last model call); the oracle for accounting is the UsageRecord ledger.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import openai
import pytest
from django.contrib.auth.models import Group

from conversations.models import Attachment, Budget, UsageRecord
from providers.emulators import Fault
from providers.models import ModelConfig
from tests.api.conftest import ApiServer, openai_client
from tests.images.image_corpus import encode, noise

pytestmark = pytest.mark.django_db(transaction=True)

MODELS = [
    ("llama-3.2-3b", "cloudflare", False),
    ("llama-3.2-11b-vision", "cloudflare", True),
    ("llama-3.2-90b-vision", "dashscope", True),
    ("llama-3-70b", "qianfan", False),
]
EMULATOR_SECRETS = ("cf-emu-token-0001", "sk-emu-dashscope-0001", "emu-qianfan-ak",
                    "emu-qianfan-sk")


def data_url(size: tuple[int, int] = (64, 48)) -> str:
    png = encode(noise(size), "PNG")
    return "data:image/png;base64," + base64.b64encode(png).decode()


def user_turn(text: str, image: str | None = None) -> dict[str, Any]:
    if image is None:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "text", "text": text},
                                        {"type": "image_url", "image_url": {"url": image}}]}


def last_call(emulated: Any, vendor: str) -> Any:
    calls = [r for r in emulated.requests if r.vendor == vendor and r.endpoint == "model"]
    assert calls, f"no model call reached the {vendor} emulator"
    return calls[-1]


def only_record() -> UsageRecord:
    record = UsageRecord.objects.select_related("model").get()
    assert record.source == UsageRecord.Source.API
    return record


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}, body
    return body


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# --- every model, stream and not ----------------------------------------------------------------
@pytest.mark.parametrize(("slug", "vendor", "vision"), MODELS)
def test_each_model_streams_a_completion_with_usage_into_the_ledger(
        api: openai.OpenAI, emulated: Any, slug: str, vendor: str, vision: bool) -> None:
    stream = api.chat.completions.create(
        model=slug, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "Be brief."},
                  user_turn("Describe this, 你好", data_url() if vision else None)])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishing[-1] == "stop" and set(finishing[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0 and chunks[-1].usage.prompt_tokens > 0
    assert {c.model for c in chunks} == {slug} and len({c.id for c in chunks}) == 1
    call = last_call(emulated, vendor)
    assert text == call.sent_text != ""
    assert "\ufffd" not in text
    record = only_record()
    assert record.model.slug == slug and record.status == "complete"
    assert record.completion_tokens == chunks[-1].usage.completion_tokens
    assert record.prompt_tokens == chunks[-1].usage.prompt_tokens
    assert record.finished_at is not None and record.duration_ms is not None
    if vendor == "dashscope":
        assert len(call.image_bytes) == 1  # it fetched our signed URL
    # An API call keeps no uploaded images once the provider has them.
    assert not Attachment.objects.exists()


@pytest.mark.parametrize(("slug", "vendor", "vision"), MODELS)
def test_each_model_answers_a_plain_completion(api: openai.OpenAI, emulated: Any, slug: str,
                                               vendor: str, vision: bool) -> None:
    reply = api.chat.completions.create(
        model=slug, messages=[user_turn("First question", data_url() if vision else None),
                              {"role": "assistant", "content": "First answer"},
                              user_turn("Second question", data_url() if vision else None)])
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == slug
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == last_call(emulated, vendor).sent_text != ""
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.total_tokens == (
        reply.usage.prompt_tokens + reply.usage.completion_tokens) > 0
    record = only_record()
    assert record.total_tokens == reply.usage.total_tokens and record.status == "complete"


def test_parameters_reach_the_provider_under_its_own_names(api: openai.OpenAI,
                                                           emulated: Any) -> None:
    api.chat.completions.create(model="llama-3.2-90b-vision", max_tokens=7, temperature=0.5,
                                messages=[user_turn("Hi", data_url())])
    sent = last_call(emulated, "dashscope").json["parameters"]
    assert sent["max_new_tokens"] == 7 and sent["temperature"] == 0.5
    # Neutral values of parameters a model lacks are ignored rather than refused.
    api.chat.completions.create(model="llama-3-70b", presence_penalty=0, frequency_penalty=0,
                                messages=[user_turn("Hi")])
    # (A Qianfan token cached by an earlier test may cost one refresh-and-retry call.)
    assert last_call(emulated, "qianfan").status == 200


BAD_PARAMETERS = [
    ("llama-3-70b", {"temperature": 1.5}, "temperature"),
    ("llama-3-70b", {"seed": 7}, "seed"),
    ("llama-3-70b", {"max_tokens": 10**20}, "max_tokens"),
    ("llama-3.2-3b", {"max_tokens": 10**20}, "max_tokens"),
    ("llama-3.2-11b-vision", {"max_tokens": 128_001}, "max_tokens"),
    ("llama-3.2-3b", {"max_completion_tokens": 0}, "max_completion_tokens"),
    ("llama-3.2-3b", {"frequency_penalty": -1}, "frequency_penalty"),
    ("llama-3.2-3b", {"stop": ["END"]}, "stop"),
    ("llama-3.2-3b", {"n": 2}, "n"),
    ("llama-3.2-3b", {"extra_body": {"frobnicate": True}}, "frobnicate"),
]


def test_a_bad_parameter_is_a_400_naming_it_and_nothing_is_called(api: openai.OpenAI,
                                                                  emulated: Any) -> None:
    for slug, kwargs, param in BAD_PARAMETERS:
        with pytest.raises(openai.BadRequestError) as caught:
            api.chat.completions.create(model=slug, messages=[user_turn("Hi")], **kwargs)
        error = error_of(caught.value)
        assert error["param"] == param and param in error["message"], (slug, kwargs)
        assert error["type"] == "invalid_request_error"
    assert emulated.requests == [] and not UsageRecord.objects.exists()


# --- images: data: URLs only, through the one validator -----------------------------------------
@pytest.mark.parametrize("url", [
    "http://127.0.0.1:{port}/probe.png",
    "https://127.0.0.1:{port}/probe.png",
    "file:///etc/passwd",
    "//127.0.0.1:{port}/probe.png",
])
def test_image_urls_are_refused_and_never_fetched(api: openai.OpenAI, emulated: Any,
                                                  url: str) -> None:
    url = url.format(port=emulated.port)
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(model="llama-3.2-90b-vision",
                                    messages=[user_turn("What is this?", url)])
    error = error_of(caught.value)
    assert error["code"] == "image_url_not_allowed" and "data: URLs" in error["message"]
    assert error["param"] == "messages[0].content[1].image_url"
    assert emulated.requests == []  # not the image, not a model call
    assert not UsageRecord.objects.exists() and not Attachment.objects.exists()


@pytest.mark.parametrize(("slug", "messages", "code"), [
    ("llama-3.2-3b", [user_turn("Look", data_url())], "images_not_supported"),
    ("llama-3.2-90b-vision", [user_turn("No image here")], "image_required"),
    ("llama-3.2-11b-vision", [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url()}},
        {"type": "image_url", "image_url": {"url": data_url()}}]}], "too_many_images"),
    ("llama-3.2-11b-vision",
     [user_turn("Bad", "data:image/png;base64," + base64.b64encode(b"<svg/>").decode())],
     "invalid_image"),
    ("llama-3.2-11b-vision", [user_turn("Bad", "data:image/png;base64,@@@@")], "invalid_image"),
])
def test_image_rules_of_each_model_apply(api: openai.OpenAI, emulated: Any, slug: str,
                                         messages: list[Any], code: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(model=slug, messages=messages)
    assert error_of(caught.value)["code"] == code
    assert emulated.requests == []
    assert not UsageRecord.objects.exists() and not Attachment.objects.exists()


# --- provider failures ------------------------------------------------------------------------
def test_a_provider_error_mid_stream_arrives_in_the_stream(api: openai.OpenAI,
                                                           emulated: Any) -> None:
    emulated.script("cloudflare", Fault("error-after", n=3), times=None)
    stream = api.chat.completions.create(model="llama-3.2-3b", stream=True,
                                         messages=[user_turn("Tell me a story")])
    parts: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            parts.append(chunk.choices[0].delta.content or "")
    assert "".join(parts) == last_call(emulated, "cloudflare").sent_text != ""
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "upstream_rate_limited"
    assert emulated.calls("cloudflare") == 1  # never retried once text was sent
    record = only_record()
    # No usage from the provider: an estimate is charged, never zero.
    assert record.status == "failed" and record.completion_tokens > 0


@pytest.mark.parametrize(("fault", "status", "code"), [
    ("auth-before", 502, "upstream_auth"),
    ("500-before", 502, "upstream_unavailable"),
    ("quota-before", 429, "upstream_quota_exhausted"),
])
@pytest.mark.parametrize("stream", [True, False])
def test_a_provider_failure_before_output_is_an_http_error_without_secrets(
        api_server: ApiServer, api: openai.OpenAI, emulated: Any, fault: str, status: int,
        code: str, stream: bool) -> None:
    emulated.script("cloudflare", fault, times=None)
    with pytest.raises(openai.APIStatusError) as caught:
        api.chat.completions.create(model="llama-3.2-3b", stream=stream,
                                    messages=[user_turn("Hi")])
    assert caught.value.status_code == status
    assert error_of(caught.value)["code"] == code
    raw = caught.value.response.text + api_server.log_text()
    assert not any(secret in raw for secret in EMULATOR_SECRETS)
    assert f"127.0.0.1:{emulated.port}" not in caught.value.response.text
    record = only_record()
    assert record.status == "failed" and record.total_tokens == 0


def test_a_client_that_leaves_cancels_the_upstream_and_is_charged(api: openai.OpenAI,
                                                                  emulated: Any) -> None:
    emulated.script("cloudflare", Fault("slow", rate=20, n=400), times=None)
    stream = api.chat.completions.create(model="llama-3.2-3b", stream=True,
                                         messages=[user_turn("Long story please")])
    received = 0
    for chunk in stream:
        received += len(chunk.choices[0].delta.content or "")
        if received > 10:
            break
    stream.close()
    wait_until(lambda: last_call(emulated, "cloudflare").outcome == "client-closed")
    wait_until(lambda: UsageRecord.objects.filter(finished_at__isnull=False).exists())
    record = only_record()
    assert record.status == "stopped" and record.completion_tokens > 0


# --- access, budgets and limits -----------------------------------------------------------------
def test_an_outsider_cannot_use_a_model_restricted_to_a_team(
        api_server: ApiServer, emulated: Any, member: Any, outsider: Any,
        make_token: Any) -> None:
    team = Group.objects.create(name="research")
    member.groups.add(team)
    ModelConfig.objects.get(slug="llama-3-70b").groups.add(team)
    stranger = openai_client(api_server, make_token(outsider))
    assert "llama-3-70b" not in {m.id for m in stranger.models.list()}
    with pytest.raises(openai.NotFoundError) as caught:
        stranger.chat.completions.create(model="llama-3-70b", messages=[user_turn("Hi")])
    error = error_of(caught.value)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    with pytest.raises(openai.NotFoundError) as unknown:
        stranger.chat.completions.create(model="gpt-4o", messages=[user_turn("Hi")])
    assert error_of(unknown.value)["message"].replace("gpt-4o", "llama-3-70b") == (
        error["message"])  # restricted and nonexistent look the same
    assert emulated.requests == [] and not UsageRecord.objects.exists()
    insider = openai_client(api_server, make_token(member))
    assert "llama-3-70b" in {m.id for m in insider.models.list()}
    reply = insider.chat.completions.create(model="llama-3-70b", messages=[user_turn("Hi")])
    assert reply.choices[0].message.content == last_call(emulated, "qianfan").sent_text


def test_a_used_up_budget_refuses_with_429_saying_when_it_resets(
        api_server: ApiServer, api: openai.OpenAI, emulated: Any, owner: Any) -> None:
    Budget.objects.create(user=owner, max_tokens=1)
    api.chat.completions.create(model="llama-3.2-3b", messages=[user_turn("Hi")])
    with pytest.raises(openai.RateLimitError) as caught:
        api.chat.completions.create(model="llama-3.2-3b", messages=[user_turn("Again")])
    error = error_of(caught.value)
    assert error["code"] == "budget_exceeded" and error["type"] == "insufficient_quota"
    assert "budget" in error["message"] and "resets at" in error["message"]
    assert int(caught.value.response.headers["Retry-After"]) > 0
    assert emulated.calls("cloudflare") == 1 and UsageRecord.objects.count() == 1


def test_the_rate_limit_refuses_with_429_saying_when_to_retry(
        limited_server: ApiServer, emulated: Any, owner: Any, make_token: Any) -> None:
    client = openai_client(limited_server, make_token(owner))
    for _ in range(2):
        client.chat.completions.create(model="llama-3.2-3b", messages=[user_turn("Hi")])
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="llama-3.2-3b", stream=True,
                                       messages=[user_turn("Hi")])
    error = error_of(caught.value)
    assert error["code"] == "rate_limit_exceeded" and "last minute" in error["message"]
    assert "send again at" in error["message"]
    assert 0 < int(caught.value.response.headers["Retry-After"]) <= 60
    assert emulated.calls("cloudflare") == 2
    assert UsageRecord.objects.filter(source="api").count() == 2


def test_a_prompt_over_the_size_limit_is_refused(api: openai.OpenAI, emulated: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(model="llama-3.2-3b", messages=[
            {"role": "system", "content": "x" * 20_000}, user_turn("y" * 20_000)])
    assert error_of(caught.value)["code"] == "prompt_too_large"
    assert emulated.requests == [] and not UsageRecord.objects.exists()


MALFORMED = [
    ({"messages": [{"role": "user", "content": "Hi"}]}, "model"),
    ({"model": "llama-3.2-3b"}, "messages"),
    ({"model": "llama-3.2-3b", "messages": []}, "messages"),
    ({"model": "llama-3.2-3b", "messages": [{"role": "tool", "content": "x"}]},
     "messages[0].tool_call_id"),  # a tool result must answer a call (api/tools.py)
    ({"model": "llama-3.2-3b", "messages": [{"role": "assistant", "content": "x"}]},
     "messages"),
    ({"model": "llama-3.2-3b", "messages": [{"role": "user", "content": 5}]},
     "messages[0].content"),
    ({"model": "llama-3.2-3b", "messages": [
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "messages[0].content[0]"),
    ({"model": "llama-3.2-3b", "messages": [{"role": "user", "content": "x"}],
      "stream": "yes"}, "stream"),
]


def test_malformed_requests_get_a_400_naming_the_field(api_server: ApiServer, emulated: Any,
                                                       owner: Any, make_token: Any) -> None:
    headers = {"Authorization": f"Bearer {make_token(owner)}"}
    for body, param in MALFORMED:
        response = httpx.post(f"{api_server.url}/v1/chat/completions", json=body,
                              headers=headers)
        assert response.status_code == 400, body
        assert response.json()["error"]["param"] == param, body
    assert emulated.requests == []


def test_a_body_that_is_not_json_is_a_400(api_server: ApiServer, emulated: Any, owner: Any,
                                          make_token: Any) -> None:
    response = httpx.post(f"{api_server.url}/v1/chat/completions", content=b"{nope",
                          headers={"Authorization": f"Bearer {make_token(owner)}",
                                   "Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_a_plain_request_that_gives_up_also_cancels_the_upstream(
        api_server: ApiServer, emulated: Any, owner: Any, make_token: Any) -> None:
    emulated.script("qianfan", Fault("slow", rate=20, n=400), times=None)
    impatient = openai.OpenAI(base_url=f"{api_server.url}/v1", api_key=make_token(owner),
                              max_retries=0, timeout=1.0)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model="llama-3-70b",
                                          messages=[user_turn("Long story please")])
    wait_until(lambda: last_call(emulated, "qianfan").outcome == "client-closed")
    wait_until(lambda: UsageRecord.objects.filter(finished_at__isnull=False).exists())
    record = only_record()
    assert record.status == "stopped" and record.completion_tokens > 0


def test_parallel_answers_beyond_the_limit_are_refused(api: openai.OpenAI,
                                                      emulated: Any) -> None:
    emulated.script("cloudflare", Fault("slow", rate=20, n=400), times=None)
    open_streams = []
    for _ in range(3):  # MAX_CONCURRENT_ANSWERS
        stream = api.chat.completions.create(model="llama-3.2-3b", stream=True,
                                             messages=[user_turn("Long story please")])
        next(iter(stream))  # the answer has started
        open_streams.append(stream)
    with pytest.raises(openai.RateLimitError) as caught:
        api.chat.completions.create(model="llama-3.2-3b", messages=[user_turn("One more")])
    assert error_of(caught.value)["code"] == "too_many_concurrent_requests"
    assert emulated.calls("cloudflare") == 3
    for stream in open_streams:
        stream.close()
    wait_until(lambda: not UsageRecord.objects.filter(finished_at__isnull=True).exists())
    assert set(UsageRecord.objects.values_list("status", flat=True)) == {"stopped"}


@pytest.mark.parametrize("stream", [True, False])
def test_a_filtered_answer_ends_with_content_filter_and_keeps_its_text(
        api: openai.OpenAI, emulated: Any, stream: bool) -> None:
    emulated.script("qianfan", Fault("content-filter-after", n=2), times=None)
    messages = [user_turn("Something the filter dislikes")]
    if stream:
        chunks = [c for c in api.chat.completions.create(model="llama-3-70b", stream=True,
                                                         messages=messages) if c.choices]
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        reason = chunks[-1].choices[0].finish_reason
    else:
        reply = api.chat.completions.create(model="llama-3-70b", messages=messages)
        text, reason = reply.choices[0].message.content or "", reply.choices[0].finish_reason
    assert reason == "content_filter"
    assert text == last_call(emulated, "qianfan").sent_text != ""
    assert only_record().status == "complete"
