"""Answers through the runner and the emulators: nothing the provider sent is ever lost.

Every test posts through the real view; without a server loop the runner runs inline, so the
answer is finished when the POST returns. The oracle is the emulator's record of the answer
text it actually wrote to the socket.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache

from conversations.chat import services
from conversations.models import Message, MessageStatus
from conversations.rendering import _render_key, render_markdown
from providers.emulators import Fault
from tests.support import model, post_message, signed_in


def _chat(user: Any, slug: str = "llama-3.2-3b") -> Any:
    return services.conversation_create(user, model=model(slug))


def _answer(response: Any) -> Message:
    assert response.status_code in (200, 201), response.content
    return Message.objects.get(pk=response.json()["assistant"]["id"])


def _sent(emulated: Any, vendor: str) -> str:
    calls = [r for r in emulated.requests if r.vendor == vendor and r.endpoint == "model"]
    return calls[-1].sent_text


VENDORS = [("llama-3.2-3b", "cloudflare"), ("llama-3-70b", "qianfan")]


@pytest.mark.parametrize(("slug", "vendor"), VENDORS)
def test_it_stores_the_whole_answer_with_usage(emulated: Any, owner: Any, slug: str,
                                               vendor: str) -> None:
    conversation = _chat(owner, slug)
    answer = _answer(post_message(signed_in(owner), conversation, "Hello there"))
    assert answer.status == MessageStatus.COMPLETE
    assert answer.content == _sent(emulated, vendor) != ""
    assert answer.finish_reason == "stop"
    assert answer.completion_tokens and answer.prompt_tokens
    assert answer.duration_ms is not None and answer.ttft_ms is not None
    assert answer.model.slug == slug
    assert "\ufffd" not in answer.content


def test_it_writes_the_whole_answer_when_the_channel_layer_is_unreachable(
    emulated: Any, owner: Any, settings: Any
) -> None:
    # Redis away (or its connection pool exhausted): viewers miss live frames, but the answer
    # itself must still be written and saved in full.
    settings.CHANNEL_LAYERS = {"default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": "redis://127.0.0.1:1/0",
                              "socket_connect_timeout": 0.2}]}}}
    conversation = _chat(owner)
    answer = _answer(post_message(signed_in(owner), conversation,
                                  "Still here? [[emu:tokens n=30]]"))
    assert answer.status == MessageStatus.COMPLETE
    assert answer.content == _sent(emulated, "cloudflare") != ""


@pytest.mark.parametrize(("slug", "vendor"), VENDORS)
@pytest.mark.parametrize(("fault", "code"), [
    # In-band errors: Cloudflare's emulated one is 3040 (capacity), Qianfan's 336000 (internal).
    (Fault("error-after", n=3), {"cloudflare": "rate_limited", "qianfan": "unavailable"}),
    (Fault("drop-after", n=3), "truncated"),
    (Fault("stall-after", n=2, seconds=3), "timeout"),
    (Fault("no-terminator"), "truncated"),
])
def test_it_keeps_partial_text_when_the_provider_fails_mid_answer(
    emulated: Any, owner: Any, slug: str, vendor: str, fault: Fault, code: Any
) -> None:
    code = code[vendor] if isinstance(code, dict) else code
    conversation = _chat(owner, slug)
    emulated.script(vendor, fault, times=None)
    answer = _answer(post_message(signed_in(owner), conversation, "Tell me a story"))
    assert answer.status == MessageStatus.FAILED
    assert answer.error_code == code
    assert answer.content == _sent(emulated, vendor)
    assert answer.content, "the partial text must be kept"
    # Never retried once text was shown: one model call for this answer.
    assert emulated.calls(vendor) == 1
    user_message = answer.parent
    assert user_message.content == "Tell me a story" and user_message.status == "complete"


@pytest.mark.parametrize(("slug", "vendor"), VENDORS)
@pytest.mark.parametrize("fault", ["utf8-split", "crlf", "comments", "byte-by-byte",
                                   "multi-event-chunk", "unknown-fields"])
def test_awkward_framing_changes_nothing(emulated: Any, owner: Any, slug: str, vendor: str,
                                         fault: str) -> None:
    conversation = _chat(owner, slug)
    emulated.script(vendor, fault, times=None)
    answer = _answer(post_message(signed_in(owner), conversation, "Unicode please 你好"))
    assert answer.status == MessageStatus.COMPLETE
    assert answer.content == _sent(emulated, vendor)
    assert "\ufffd" not in answer.content


@pytest.mark.parametrize(("fault", "code"), [
    ("429-before", "rate_limited"), ("500-before", "unavailable"),
    ("quota-before", "quota_exhausted"), ("auth-before", "auth"),
])
def test_it_fails_cleanly_before_the_first_token(emulated: Any, owner: Any, fault: str,
                                                 code: str) -> None:
    conversation = _chat(owner)
    emulated.script("cloudflare", fault, times=None)
    answer = _answer(post_message(signed_in(owner), conversation, "Hi"))
    assert answer.status == MessageStatus.FAILED
    assert answer.error_code == code
    assert answer.content == ""
    assert answer.error_message and "cf-emu-token" not in answer.error_message
    assert not Message.objects.filter(status__in=["queued", "streaming"]).exists()


def test_a_rate_limit_that_clears_is_retried_before_the_first_token(emulated: Any,
                                                                    owner: Any) -> None:
    conversation = _chat(owner)
    emulated.script("cloudflare", "429-before", times=1)
    answer = _answer(post_message(signed_in(owner), conversation, "Hi"))
    assert answer.status == MessageStatus.COMPLETE
    assert emulated.calls("cloudflare") == 2


def test_content_filtered_mid_answer_is_an_ending_not_an_error(emulated: Any,
                                                               owner: Any) -> None:
    conversation = _chat(owner, "llama-3-70b")
    emulated.script("qianfan", Fault("content-filter-after", n=2), times=None)
    answer = _answer(post_message(signed_in(owner), conversation, "Hi"))
    assert answer.status == MessageStatus.COMPLETE
    assert answer.finish_reason == "content_filter"
    assert answer.content == _sent(emulated, "qianfan") != ""


def test_retry_makes_a_new_attempt_and_never_touches_the_prompt(emulated: Any,
                                                                owner: Any) -> None:
    conversation = _chat(owner)
    client = signed_in(owner)
    emulated.script("cloudflare", Fault("error-after", n=2), times=1)
    failed = _answer(post_message(client, conversation, "Original prompt"))
    assert failed.status == MessageStatus.FAILED
    response = client.post(f"/c/{conversation.pk}/m/{failed.pk}/regenerate/",
                           HTTP_ACCEPT="application/json")
    assert response.status_code == 201
    retry = Message.objects.get(pk=response.json()["assistant"]["id"])
    assert retry.status == MessageStatus.COMPLETE
    assert retry.parent_id == failed.parent_id
    failed.refresh_from_db()
    assert failed.status == MessageStatus.FAILED and failed.content  # kept as it was
    assert Message.objects.filter(role="user").count() == 1
    assert Message.objects.get(role="user").content == "Original prompt"


def test_qianfan_survives_an_expired_token_mid_conversation(emulated: Any, owner: Any) -> None:
    conversation = _chat(owner, "llama-3-70b")
    client = signed_in(owner)
    first = _answer(post_message(client, conversation, "First"))
    emulated.expire_qianfan_tokens()
    second = _answer(post_message(client, conversation, "Second"))
    assert first.status == second.status == MessageStatus.COMPLETE
    token_calls = [r for r in emulated.requests if r.vendor == "qianfan" and r.endpoint == "token"]
    assert len(token_calls) == 2


def test_the_model_sees_the_branch_history_with_the_system_prompt(emulated: Any,
                                                                  owner: Any) -> None:
    conversation = services.conversation_create(owner, model=model("llama-3-70b"),
                                                system_prompt="Be brief.")
    client = signed_in(owner)
    _answer(post_message(client, conversation, "One"))
    _answer(post_message(client, conversation, "Two"))
    body = [r for r in emulated.requests if r.endpoint == "model"][-1].json
    assert body["system"] == "Be brief."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"] == "One" and body["messages"][2]["content"] == "Two"


def test_an_unreadable_key_fails_the_answer_without_a_500(emulated: Any, owner: Any) -> None:
    from providers.models import Provider

    Provider.objects.filter(kind="cloudflare").update(credentials_encrypted="gAAAAAbogus")
    conversation = _chat(owner)
    answer = _answer(post_message(signed_in(owner), conversation, "Hi"))
    assert answer.status == MessageStatus.FAILED and answer.error_code == "auth"
    assert emulated.calls("cloudflare") == 0


def test_the_reaper_marks_answers_whose_runner_died_and_keeps_the_text(
    owner: Any, transactional_db: Any, settings: Any
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from conversations.answers.reaper import reap_stale

    conversation = _chat(owner)
    result = services.message_post(owner, conversation, text="Hi",
                                   client_id=__import__("uuid").uuid4())
    Message.objects.filter(pk=result.assistant_message.pk).update(
        status=MessageStatus.STREAMING, content="half an ans",
        heartbeat_at=timezone.now() - timedelta(seconds=settings.GENERATION_STALE_SECONDS + 5))
    fresh = services.conversation_create(owner, model=model())
    alive = services.message_post(owner, fresh, text="Hi", client_id=__import__("uuid").uuid4())
    Message.objects.filter(pk=alive.assistant_message.pk).update(
        status=MessageStatus.STREAMING, heartbeat_at=timezone.now())
    reaped = reap_stale()
    assert [r[1] for r in reaped] == [result.assistant_message.pk]
    stale = Message.objects.get(pk=result.assistant_message.pk)
    assert stale.status == MessageStatus.INTERRUPTED and stale.content == "half an ans"
    assert Message.objects.get(pk=alive.assistant_message.pk).status == MessageStatus.STREAMING
    assert reap_stale() == []  # safe to run again


MARKDOWN = """\
## A heading

A first paragraph with *emphasis*, `code` and a [link](https://example.com/a).

1. one item
2. another, **bold**

```python
def f(x: int) -> int:
    return x * 2
```

| a | b |
|---|---|
| 1 | 2 |

> a quote to end with, long enough that the whole answer passes the cache's minimum size.
"""


def test_a_finished_answer_is_cached_as_it_renders_whole(emulated: Any, owner: Any) -> None:
    # The streamed blocks' HTML, joined, is what the cache keeps for the finished answer: it
    # must be exactly what rendering the whole text gives (what a page without cache shows).
    conversation = _chat(owner)
    emulated.script("cloudflare", "verbatim rate=400")
    answer = _answer(post_message(signed_in(owner), conversation, MARKDOWN))
    assert answer.status == MessageStatus.COMPLETE
    assert answer.content.strip() == MARKDOWN.strip()
    assert cache.get(_render_key(answer.content)) == render_markdown(answer.content)
