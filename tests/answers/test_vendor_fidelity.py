"""Vendor fidelity through the answer core: the context budget, parameters, and errors read as
the vendors send them, on the web page and through /v1, against the emulators over real
sockets. (DashScope's image rules over a real image server: tests/answers/test_vision_answers.)
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import openai
import pytest

from conversations.chat import services
from conversations.models import Conversation, Message, MessageStatus
from providers.emulators import Fault
from providers.models import Provider
from providers.tokens import estimate_tokens
from tests.api.conftest import openai_client
from tests.images import image_corpus as corpus
from tests.support import model, post_message, queue_answer, signed_in

LONG = "The llama (Lama glama) is a domesticated South American camelid. " * 24  # ~1,560 chars


def model_calls(emulated: Any, vendor: str) -> list[Any]:
    return [r for r in emulated.requests if r.vendor == vendor and r.endpoint == "model"]


def _history(owner: Any, conversation: Conversation, turns: int, text: str) -> None:
    """`turns` finished prompt/answer pairs, stored as the services leave them."""
    for number in range(turns):
        answer = queue_answer(owner, conversation, f"{number}: {text}")
        Message.objects.filter(pk=answer.pk).update(
            status=MessageStatus.COMPLETE, content=f"Answer {number}. {text}")


def _answer(response: Any) -> Message:
    assert response.status_code == 201, response.content
    return Message.objects.get(pk=response.json()["assistant"]["id"])


# --- the context budget -------------------------------------------------------------------------
@pytest.mark.parametrize(("slug", "vendor"), [("llama-3.2-3b", "cloudflare"),
                                              ("llama-3-70b", "qianfan")])
def test_a_200_turn_conversation_still_answers_within_the_models_context(
    emulated: Any, owner: Any, slug: str, vendor: str, settings: Any
) -> None:
    settings.RATE_LIMIT_PER_MINUTE = 1000  # the stored history counts as recent answers
    conversation = services.conversation_create(owner, model=model(slug),
                                                system_prompt="Answer briefly.")
    _history(owner, conversation, 199, LONG)
    answer = _answer(post_message(signed_in(owner), conversation, "And the alpaca?"))

    assert answer.status == MessageStatus.COMPLETE, answer.error_message
    assert answer.context_dropped > 0
    [call] = model_calls(emulated, vendor)
    body = call.json
    if vendor == "cloudflare":
        sent = body["messages"]
        assert sent[0] == {"role": "system", "content": "Answer briefly."}  # never dropped
        assert sent[-1]["content"] == "And the alpaca?"  # the latest prompt, always
        tokens = sum(estimate_tokens(m["content"]) + 5 for m in sent)
        assert tokens + body["max_tokens"] <= 128000
    else:
        assert body["system"] == "Answer briefly." and body["messages"][-1]["content"] == (
            "And the alpaca?")
        assert len(body["system"]) + sum(len(m["content"]) for m in body["messages"]) <= 4800
        assert len(body["messages"]) % 2 == 1
    # The page says where history was cut.
    page = signed_in(owner).get(f"/c/{conversation.pk}/").content.decode()
    assert "earlier messages were not sent to the model" in page


def test_a_prompt_too_long_for_the_model_is_refused_before_the_network(
    emulated: Any, owner: Any, api_server: Any, make_token: Any
) -> None:
    conversation = services.conversation_create(owner, model=model("llama-3-70b"))
    response = post_message(signed_in(owner), conversation, "x" * 4900)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert "4,800" in response.json()["error"]["message"]
    assert not Message.objects.filter(conversation=conversation).exists()

    client = openai_client(api_server, make_token(owner))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="llama-3-70b",
                                       messages=[{"role": "user", "content": "x" * 4900}])
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "context_length_exceeded"
    assert error["param"] == "messages"
    assert model_calls(emulated, "qianfan") == []


def test_max_tokens_above_the_window_is_cut_to_what_fits(emulated: Any, owner: Any) -> None:
    conversation = services.conversation_create(owner, model=model("llama-3.2-3b"),
                                                params={"max_tokens": 128000})
    answer = _answer(post_message(signed_in(owner), conversation, "Hi"))
    assert answer.status == MessageStatus.COMPLETE
    [call] = model_calls(emulated, "cloudflare")
    assert call.json["max_tokens"] < 128000
    assert call.json["max_tokens"] + estimate_tokens("Hi") <= 128000


# --- max_tokens on all four models through /v1 --------------------------------------------------
@pytest.mark.parametrize(("slug", "vendor", "wire_name"), [
    ("llama-3.2-3b", "cloudflare", "max_tokens"),
    ("llama-3.2-11b-vision", "cloudflare", "max_tokens"),
    ("llama-3.2-90b-vision", "dashscope", "max_new_tokens"),
    ("llama-3-70b", "qianfan", None),  # no such parameter: enforced while reading
])
def test_max_tokens_works_on_all_four_models(emulated: Any, owner: Any, api_server: Any,
                                             make_token: Any, slug: str, vendor: str,
                                             wire_name: str | None) -> None:
    client = openai_client(api_server, make_token(owner))
    content: Any = "Tell me a long story [[emu:tokens n=200 rate=200]]"
    if vendor == "dashscope":
        image = base64.b64encode(corpus.encode(corpus.noise((64, 64)), "PNG")).decode()
        content = [{"type": "text", "text": content},
                   {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}]
    reply = client.chat.completions.create(
        model=slug, max_tokens=12, user="user-42",
        messages=[{"role": "user", "content": content}])

    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    calls = model_calls(emulated, vendor)
    body = calls[-1].json
    if wire_name == "max_new_tokens":
        assert body["parameters"]["max_new_tokens"] == 12
    elif wire_name:
        assert body[wire_name] == 12
    else:
        # Qianfan: never sent (not a documented key), the stream was closed at the cap, and
        # OpenAI's `user` went to the vendor's own `user_id`.
        assert "max_tokens" not in body and "max_output_tokens" not in body
        assert body["user_id"] == "user-42"
        assert estimate_tokens(choice.message.content or "") <= 12
        for _ in range(100):  # the emulator records how a stream ended once it notices
            if model_calls(emulated, vendor)[-1].outcome != "pending":
                break
            time.sleep(0.02)
        assert model_calls(emulated, vendor)[-1].outcome == "client-closed"


# --- errors read as the vendors send them -------------------------------------------------------
def test_qianfan_client_errors_are_not_retried_and_say_what_was_refused(
    emulated: Any, owner: Any
) -> None:
    emulated.script("qianfan", Fault("500-before", code=336104, message="invalid system"),
                    times=None)
    conversation = services.conversation_create(owner, model=model("llama-3-70b"))
    answer = _answer(post_message(signed_in(owner), conversation, "Hi"))
    assert answer.status == MessageStatus.FAILED and answer.error_code == "bad_request"
    assert "336104" in answer.error_message
    assert emulated.calls("qianfan") == 1  # not retried as an outage


def test_qianfan_code_100_refreshes_the_token_once(emulated: Any, owner: Any) -> None:
    emulated.script("qianfan", Fault("auth-before", code=100), times=1)
    conversation = services.conversation_create(owner, model=model("llama-3-70b"))
    answer = _answer(post_message(signed_in(owner), conversation, "Hi"))
    assert answer.status == MessageStatus.COMPLETE, answer.error_message
    tokens = [r for r in emulated.requests if r.vendor == "qianfan" and r.endpoint == "token"]
    assert len(tokens) >= 2  # fetched again after the refusal


def test_a_cloudflare_account_id_the_token_does_not_own_tells_the_admin(
    emulated: Any, owner: Any
) -> None:
    provider = Provider.objects.get(kind="cloudflare")
    provider.set_credentials({**provider.get_credentials(), "account_id": "f" * 32})
    provider.save()
    conversation = services.conversation_create(owner, model=model("llama-3.2-3b"))
    answer = _answer(post_message(signed_in(owner), conversation, "Hi"))
    assert answer.status == MessageStatus.FAILED and answer.error_code == "auth"
    assert "account id" in answer.error_message
    assert "f" * 32 not in answer.error_message


def test_a_prompt_whose_answer_failed_is_sent_once(emulated: Any, owner: Any) -> None:
    conversation = services.conversation_create(owner, model=model("llama-3-70b"))
    emulated.script("qianfan", Fault("500-before"), times=3)  # every attempt of one answer
    failed = _answer(post_message(signed_in(owner), conversation, "First try"))
    assert failed.status == MessageStatus.FAILED and failed.content == ""
    answer = _answer(post_message(signed_in(owner), conversation, "Second try"))
    assert answer.status == MessageStatus.COMPLETE
    body = model_calls(emulated, "qianfan")[-1].json
    assert body["messages"] == [{"role": "user", "content": "Second try"}]


def test_an_earlier_turn_qianfan_flagged_is_left_out_and_the_chat_goes_on(
    emulated: Any, owner: Any
) -> None:
    conversation = services.conversation_create(owner, model=model("llama-3-70b"))
    first = _answer(post_message(signed_in(owner), conversation, "Something flagged later"))
    assert first.status == MessageStatus.COMPLETE
    emulated.script("qianfan", Fault("content-filter-after", n=0, ban_round=0), times=1)
    refused = _answer(post_message(signed_in(owner), conversation, "Go on"))
    assert refused.finish_reason == "content_filter"
    assert "earlier message" in refused.error_message and "Retry" in refused.error_message
    flagged = Message.objects.get(pk=first.parent_id)
    assert flagged.context_excluded and Message.objects.get(pk=first.pk).context_excluded

    response = signed_in(owner).post(
        f"/c/{conversation.pk}/m/{refused.pk}/regenerate/", HTTP_ACCEPT="application/json")
    assert response.status_code == 201, response.content
    retried = Message.objects.get(pk=response.json()["assistant"]["id"])
    assert retried.status == MessageStatus.COMPLETE
    body = model_calls(emulated, "qianfan")[-1].json
    assert body["messages"] == [{"role": "user", "content": "Go on"}]
    page = signed_in(owner).get(f"/c/{conversation.pk}/").content.decode()
    assert "flagged this message" in page


def test_v1_says_which_message_qianfan_flagged(emulated: Any, owner: Any, api_server: Any,
                                               make_token: Any) -> None:
    client = openai_client(api_server, make_token(owner))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="llama-3-70b", messages=[
            {"role": "user", "content": "One"}, {"role": "assistant", "content": "Two"},
            {"role": "user", "content": "Three [[emu:content-filter-after n=0 ban_round=0]]"}])
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "content_filter"
    assert "earlier message" in error["message"]


# --- the emulators disagree with us where the vendors would -------------------------------------
def test_the_qianfan_emulator_refuses_keys_the_vendor_does_not_document(
    emulated: Any, owner: Any
) -> None:
    import httpx

    creds = emulated.credentials
    token = httpx.post(f"{emulated.base_urls['qianfan']}/oauth/2.0/token", params={
        "grant_type": "client_credentials", "client_id": creds.qianfan_ak,
        "client_secret": creds.qianfan_sk}).json()["access_token"]
    url = (f"{emulated.base_urls['qianfan']}/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/"
           f"llama_3_70b")
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_output_tokens": 10}
    refused = httpx.post(url, params={"access_token": token}, json=body).json()
    assert refused["error_code"] == 336003 and "max_output_tokens" in refused["error_msg"]
    emulated.options.qianfan_unknown_keys = "ignore"  # the other reading of the vendor
    try:
        accepted = httpx.post(url, params={"access_token": token}, json=body).json()
    finally:
        emulated.options.qianfan_unknown_keys = "refuse"
    assert "error_code" not in accepted and accepted["result"]


def test_an_answer_whose_cumulative_text_is_rewritten_equals_the_vendors_text(
    emulated: Any, owner: Any, api_server: Any, make_token: Any
) -> None:
    """DashScope sends the whole text in every event; one event with a replacement character
    at its end, corrected by the next, must neither duplicate nor keep the odd character."""
    from tests.support import point_providers_at

    point_providers_at(emulated)
    emulated.options.dashscope_accept_data_uri = True
    provider = Provider.objects.get(kind="dashscope")
    provider.options = {**provider.options, "image_transport": "data_uri"}
    provider.save()
    try:
        image = base64.b64encode(corpus.encode(corpus.noise((64, 64)), "PNG")).decode()
        client = openai_client(api_server, make_token(owner))
        stream = client.chat.completions.create(model="llama-3.2-90b-vision", stream=True,
                                                messages=[{"role": "user", "content": [
            {"type": "text", "text": "Describe it [[emu:dashscope-rewrite n=4]]"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}]}])
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    finally:
        emulated.options.dashscope_accept_data_uri = False
    sent = model_calls(emulated, "dashscope")[-1].sent_text
    assert text == sent and "\ufffd" not in text  # nothing repeated, nothing odd kept


def test_a_second_user_message_is_one_request_not_merged_twice(emulated: Any,
                                                               owner: Any) -> None:
    conversation = services.conversation_create(owner, model=model("llama-3-70b"))
    _answer(post_message(signed_in(owner), conversation, "One"))
    _answer(post_message(signed_in(owner), conversation, "Two"))
    body = model_calls(emulated, "qianfan")[-1].json
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][-1]["content"] == "Two"


def test_a_request_the_budget_shapes_keeps_its_client_id_idempotent(emulated: Any,
                                                                    owner: Any) -> None:
    conversation = services.conversation_create(owner, model=model("llama-3.2-3b"))
    client_id = uuid.uuid4()
    first = post_message(signed_in(owner), conversation, "Hi", client_id=client_id)
    again = post_message(signed_in(owner), conversation, "Hi", client_id=client_id)
    assert first.status_code == 201 and again.status_code == 200
    assert len(model_calls(emulated, "cloudflare")) == 1


def _image_content(text: str) -> list[dict[str, Any]]:
    image = base64.b64encode(corpus.encode(corpus.noise((64, 64)), "PNG")).decode()
    return [{"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}]


@pytest.mark.parametrize(("slug", "vendor", "fault", "status", "code", "words"), [
    ("llama-3.2-90b-vision", "dashscope",
     Fault("500-before", code="InvalidParameter.DataInspection", status=400), 400,
     "upstream_bad_request", "SITE_URL"),
    ("llama-3.2-90b-vision", "dashscope", Fault("free-tier-before"), 429,
     "upstream_quota_exhausted", "free trial"),
    ("llama-3-70b", "qianfan", Fault("500-before", code=336105), 400, "upstream_bad_request",
     "336105"),
])
def test_v1_reads_vendor_errors_as_the_vendors_send_them(
    emulated: Any, owner: Any, api_server: Any, make_token: Any, slug: str, vendor: str,
    fault: Fault, status: int, code: str, words: str
) -> None:
    emulated.script(vendor, fault, times=None)
    client = openai_client(api_server, make_token(owner))
    content: Any = _image_content("What is it?") if vendor == "dashscope" else "Hi"
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=slug, messages=[{"role": "user", "content": content}])
    assert caught.value.status_code == status
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == code and words in error["message"]
    # Not retried (a retry policy would make 3 attempts). The API server's process may hold a
    # Qianfan token from before the emulator's reset: one refusal and refresh may come first.
    assert len(model_calls(emulated, vendor)) <= (2 if vendor == "qianfan" else 1)


def test_v1_says_the_cloudflare_account_id_is_wrong_without_showing_it(
    emulated: Any, owner: Any, api_server: Any, make_token: Any
) -> None:
    provider = Provider.objects.get(kind="cloudflare")
    provider.set_credentials({**provider.get_credentials(), "account_id": "e" * 32})
    provider.save()
    client = openai_client(api_server, make_token(owner))
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="llama-3.2-3b",
                                       messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 502
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "upstream_auth"
    assert "account id" in error["message"] and "e" * 32 not in error["message"]
