"""Conversation titles: written by a model after the first answer, through the emulators.

Without a server loop (the sync test client) the answer runs inline in the POST and so does its
title, after the answer's final frame. With REDIS_URL the title is a Celery task: a real worker
on a queue of this test's own takes it. Generated titles are off in the other tests
(tests/conftest.py); each test here turns them on.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings as django_settings
from django.db import close_old_connections
from django.utils import timezone

from chatsite.celery import app
from conversations import events
from conversations.answers import reaper, titles
from conversations.chat import services
from conversations.models import Budget, Conversation, Message, MessageStatus, UsageRecord
from conversations.usage import accounting
from providers.emulators import Fault
from providers.models import ModelConfig
from tests.answers.test_celery_vision import QueueWorker, wait_until
from tests.conftest import ARTIFACTS, child_env
from tests.support import model, post_message, signed_in

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def titled(settings: Any) -> None:
    """Titles on, written in-process (the embedded configuration, whatever REDIS_URL is)."""
    settings.GENERATED_TITLES = True
    settings.REDIS_URL = ""


@pytest.fixture
def title_queue() -> Iterator[str]:
    """Tasks sent by this test process go to a queue only this test's worker consumes."""
    queue = f"titles-test-{uuid.uuid4().hex[:12]}"
    previous = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    yield queue
    app.conf.task_default_queue = previous


def _chat(user: Any, slug: str = "llama-3.2-3b") -> Conversation:
    return services.conversation_create(user, model=model(slug))


def _post(user: Any, conversation: Conversation, text: str, **extra: Any) -> Message:
    response = post_message(signed_in(user), conversation, text, **extra)
    assert response.status_code in (200, 201), response.content
    return Message.objects.get(pk=response.json()["assistant"]["id"])


def _title_rows(conversation: Conversation) -> list[UsageRecord]:
    return list(UsageRecord.objects.filter(conversation=conversation,
                                           purpose=UsageRecord.Purpose.TITLE))


def _model_calls(emulated: Any, vendor: str = "cloudflare") -> list[Any]:
    return [r for r in emulated.requests if r.vendor == vendor and r.endpoint == "model"]


def _system_of(call: Any) -> str:
    body = call.json if isinstance(call.json, dict) else {}
    return " ".join(m.get("content", "") for m in body.get("messages", [])
                    if m.get("role") == "system")


# --- the title ------------------------------------------------------------------------------------
def test_the_first_answer_names_the_conversation_with_a_plain_title(
        emulated: Any, owner: Any, titled: None) -> None:
    conversation = _chat(owner)
    prompt = "**Explain** the `zip` function\n```python\nzip(a, b)\n```"
    answer = _post(owner, conversation, prompt)
    assert answer.status == MessageStatus.COMPLETE
    conversation.refresh_from_db()
    calls = _model_calls(emulated)
    assert len(calls) == 2  # the answer, then the title
    assert "You name conversations" in _system_of(calls[1])
    # The emulator echoes the prompt with Markdown and filler; the title is plain.
    assert conversation.title == titles.title_from_model(calls[1].sent_text)
    assert conversation.title.startswith("Echo: Explain the zip function")
    assert not any(mark in conversation.title for mark in ("**", "`", "\n", "["))
    assert len(conversation.title.split()) <= titles.MAX_WORDS
    assert conversation.title_is_auto


def test_the_title_call_is_charged_to_the_owner_as_a_title_row(
        emulated: Any, owner: Any, titled: None) -> None:
    conversation = _chat(owner)
    answer = _post(owner, conversation, "What is a llama?")
    [row] = _title_rows(conversation)
    assert row.user == owner and row.message is None and row.source == "web"
    assert row.model.slug == "llama-3.2-3b" and row.status == MessageStatus.COMPLETE
    assert row.prompt_tokens > 0 and row.completion_tokens > 0
    assert row.cost == round(row.model.cost(row.prompt_tokens, row.completion_tokens), 8) > 0
    assert row.finished_at is not None
    # The answer's own row is unchanged: purpose "answer", its message.
    assert UsageRecord.objects.get(message=answer).purpose == UsageRecord.Purpose.ANSWER


def test_only_the_first_answer_names_the_conversation(emulated: Any, owner: Any,
                                                      titled: None) -> None:
    conversation = _chat(owner)
    _post(owner, conversation, "First question")
    conversation.refresh_from_db()
    first = conversation.title
    _post(owner, conversation, "A second, different question")
    conversation.refresh_from_db()
    assert conversation.title == first
    assert len(_title_rows(conversation)) == 1
    assert len(_model_calls(emulated)) == 3


def test_a_title_the_user_set_is_never_replaced(emulated: Any, owner: Any, titled: None) -> None:
    conversation = _chat(owner)
    services.conversation_update(owner, conversation, title="My llama notes")
    _post(owner, conversation, "What is a llama?")
    conversation.refresh_from_db()
    assert conversation.title == "My llama notes" and not conversation.title_is_auto
    assert _title_rows(conversation) == [] and len(_model_calls(emulated)) == 1


def test_a_rename_while_the_title_is_written_wins(emulated: Any, owner: Any,
                                                  titled: None) -> None:
    conversation = _chat(owner)
    emulated.script("cloudflare", Fault("tokens", n=6), times=1)  # the answer
    emulated.script("cloudflare", Fault("tokens", n=6, ttft=2.0), times=1)  # the title: slow
    done: list[Message] = []

    def post() -> None:
        try:
            done.append(_post(owner, conversation, "What is a llama?"))
        finally:
            close_old_connections()

    worker = threading.Thread(target=post)
    worker.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not UsageRecord.objects.filter(
            conversation=conversation, purpose="title").exists():
        time.sleep(0.05)
    [row] = _title_rows(conversation)
    assert row.finished_at is None  # the title call is under way
    services.conversation_update(owner, conversation, title="Named by me")
    worker.join(30)
    assert done and done[0].status == MessageStatus.COMPLETE
    conversation.refresh_from_db()
    assert conversation.title == "Named by me" and not conversation.title_is_auto
    row.refresh_from_db()
    assert row.finished_at is not None and row.cost > 0  # the call was still charged


def test_the_cleaned_first_line_stays_when_the_title_call_fails(
        emulated: Any, owner: Any, titled: None) -> None:
    conversation = _chat(owner)
    emulated.script("cloudflare", Fault("tokens", n=6), times=1)  # the answer
    emulated.script("cloudflare", Fault("auth-before"), times=None)  # every title attempt
    _post(owner, conversation, "## Sorting a list\nin *Python*, with `sorted()`")
    conversation.refresh_from_db()
    assert conversation.title == "Sorting a list"
    [row] = _title_rows(conversation)
    assert row.status == MessageStatus.FAILED and row.error_code == "auth"


def test_the_cleaned_first_line_stays_when_no_text_model_is_available(
        emulated: Any, owner: Any, titled: None) -> None:
    conversation = _chat(owner, "llama-3.2-11b-vision")  # a vision model never writes titles
    ModelConfig.objects.filter(vision=False).update(enabled=False)
    _post(owner, conversation, "> Describe [this page](https://example.com/a/b) please")
    conversation.refresh_from_db()
    assert conversation.title == "Describe this page please"
    assert _title_rows(conversation) == []


def test_the_title_model_chosen_by_an_administrator_writes_it(
        emulated: Any, owner: Any, titled: None) -> None:
    ModelConfig.objects.filter(slug="llama-3-70b").update(for_titles=True)
    conversation = _chat(owner)
    _post(owner, conversation, "What is a llama?")
    [row] = _title_rows(conversation)
    assert row.model.slug == "llama-3-70b"
    assert len(_model_calls(emulated, "qianfan")) == 1


def test_the_default_title_model_is_the_cheapest_priced_text_model(emulated: Any,
                                                                   owner: Any) -> None:
    assert titles.title_model(owner).slug == "llama-3.2-3b"  # type: ignore[union-attr]
    ModelConfig.objects.filter(slug="llama-3.2-3b").update(enabled=False)
    # Left: the 70B at no known price (0) and vision models, which never write titles.
    assert titles.title_model(owner).slug == "llama-3-70b"  # type: ignore[union-attr]


def test_a_chinese_prompt_asks_for_a_chinese_title(emulated: Any, owner: Any,
                                                    titled: None) -> None:
    conversation = _chat(owner)
    _post(owner, conversation, "请解释一下羊驼和骆驼的区别")
    system = _system_of(_model_calls(emulated)[-1])
    assert "Simplified Chinese" in system
    conversation.refresh_from_db()
    assert "羊驼" in conversation.title


def test_the_readers_interface_language_is_the_fallback_language(
        emulated: Any, owner: Any, titled: None) -> None:
    conversation = _chat(owner)
    client = signed_in(owner)
    client.cookies[django_settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
    client.post(f"/c/{conversation.pk}/messages/",
                {"text": "print(1)", "client_id": str(uuid.uuid4())},
                HTTP_ACCEPT="application/json")
    system = _system_of(_model_calls(emulated)[-1])
    assert "if that is unclear, in Simplified Chinese" in system


def test_the_answers_final_frame_goes_out_before_the_title_call(
        emulated: Any, owner: Any, titled: None, settings: Any) -> None:
    conversation = _chat(owner)
    listen = _listening(settings, conversation)
    answer = _post(owner, conversation, "What is a llama?")
    seen = listen()
    kinds = [(e["type"], e.get("status")) for e in seen if e["type"] in {
        events.STATE, events.CONVERSATION}]
    final = kinds.index((events.STATE, MessageStatus.COMPLETE))
    titled_at = kinds.index((events.CONVERSATION, None))
    assert final < titled_at
    title_event = next(e for e in seen if e["type"] == events.CONVERSATION)
    conversation.refresh_from_db()
    assert title_event["title"] == conversation.title and title_event["auto"] is True
    assert answer.status == MessageStatus.COMPLETE


def test_open_pages_hear_the_title_even_when_it_is_the_first_line_already(
        emulated: Any, owner: Any, titled: None, settings: Any) -> None:
    # The title call fails: the cleaned first line, stored by the POST, is the title. It
    # changes nothing in the database, but an open page still shows "New conversation".
    conversation = _chat(owner)
    listen = _listening(settings, conversation)
    emulated.script("cloudflare", Fault("tokens", n=4), times=1)  # the answer
    emulated.script("cloudflare", Fault("auth-before"), times=None)  # every title attempt
    _post(owner, conversation, "Sorting a list in Python")
    seen = listen()
    conversation.refresh_from_db()
    assert conversation.title == "Sorting a list in Python" and conversation.title_is_auto
    [title_event] = [e for e in seen if e["type"] == events.CONVERSATION]
    assert title_event["title"] == conversation.title and title_event["auto"] is True


def test_a_renamed_conversation_gets_no_title_event(emulated: Any, owner: Any, titled: None,
                                                    settings: Any) -> None:
    conversation = _chat(owner)
    _post(owner, conversation, "What is a llama?")
    services.conversation_update(owner, conversation, title="Mine")
    assert titles._store(conversation.pk, "Mine") is False
    assert titles._store(conversation.pk, "Something else") is False
    conversation.refresh_from_db()
    assert conversation.title == "Mine"


def _listening(settings: Any, conversation: Conversation) -> Any:
    """Join the conversation's group; the returned call gives every event sent to it since.
    One process, one loop per call here: the in-memory layer keeps the events in order."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(events.conversation_group(conversation.pk), channel)
    return lambda: async_to_sync(_drain)(layer, channel)


async def _drain(layer: Any, channel: str) -> list[dict[str, Any]]:
    """Every event waiting on `channel`, in order."""
    seen = []
    while True:
        try:
            seen.append(await asyncio.wait_for(layer.receive(channel), 1.0))
        except TimeoutError:
            return seen


@pytest.mark.redis
@pytest.mark.skipif(not django_settings.REDIS_URL, reason=(
    "needs REDIS_URL (a real broker and a Celery worker): runs in the PostgreSQL + Redis CI "
    "configuration"))
def test_with_redis_a_celery_worker_writes_the_title(emulated: Any, owner: Any, settings: Any,
                                                      title_queue: str) -> None:
    settings.GENERATED_TITLES = True
    worker = QueueWorker(child_env(GENERATED_TITLES="1"),
                         ARTIFACTS / "logs" / "celery-titles.log", "titles", title_queue)
    try:
        conversation = _chat(owner)
        answer = _post(owner, conversation, "**What** is a `llama`?")  # a text answer: in-process
        assert answer.status == MessageStatus.COMPLETE
        wait_until(lambda: UsageRecord.objects.filter(
            conversation=conversation, purpose="title", finished_at__isnull=False).exists(),
            timeout=60, what="the title call")
        wait_until(lambda: Conversation.objects.get(pk=conversation.pk).title.startswith(
            "Echo: What is a llama"), timeout=10, what="the title")
        [row] = _title_rows(conversation)
        assert row.status == MessageStatus.COMPLETE and row.cost > 0 and row.message is None
        assert titles.TASK_NAME in worker.log_text()
    finally:
        worker.stop()


# --- the ledger: budgets yes, limits on answers no ---------------------------------------------
def _title_row(user: Any, *, finished: bool, cost: str = "0") -> UsageRecord:
    row = accounting.record_start(user, model(), purpose=UsageRecord.Purpose.TITLE)
    if finished:
        UsageRecord.objects.filter(pk=row.pk).update(
            finished_at=timezone.now(), status="complete", prompt_tokens=10,
            completion_tokens=5, cost=Decimal(cost))
    return row


def test_title_calls_do_not_count_as_running_answers(owner: Any, settings: Any) -> None:
    for _ in range(settings.MAX_CONCURRENT_ANSWERS):
        _title_row(owner, finished=False)
    assert accounting.check_limits(owner) == []


def test_title_calls_do_not_count_in_the_rate_limit(owner: Any, settings: Any) -> None:
    settings.RATE_LIMIT_PER_MINUTE = 2
    for _ in range(3):
        _title_row(owner, finished=True)
    assert accounting.check_limits(owner) == []


def test_title_calls_count_towards_budgets(owner: Any) -> None:
    _title_row(owner, finished=True, cost="2")
    Budget.objects.create(user=owner, max_cost=Decimal("1.5"))
    with pytest.raises(accounting.LimitExceeded) as refused:
        accounting.check_limits(owner)
    assert refused.value.code == "budget_exceeded"


def test_no_title_call_once_the_budget_is_used_up(emulated: Any, owner: Any,
                                                  titled: None) -> None:
    conversation = _chat(owner)
    # The answer is the last one the budget allows: it pushes the cost over the limit.
    Budget.objects.create(user=owner, max_tokens=10)
    _post(owner, conversation, "Explain *llamas*")
    conversation.refresh_from_db()
    assert conversation.title == "Explain llamas"
    assert _title_rows(conversation) == [] and len(_model_calls(emulated)) == 1


# --- cleaning -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("prompt", "title"), [
    ("**Explain** the `zip` function\n```python\nzip(a, b)\n```", "Explain the zip function"),
    ("```python\nprint(1)\n```", "print(1)"),
    ("# Heading\n> quoted", "Heading"),
    ("see https://example.com/a/b?x=1 and [the docs](http://x.y/z)",
     "see example.com/a/b and the docs"),
    ("tab\there\u202e\u0000 zero\u200bwidth", "tab here zero width"),
    ("[[emu:tokens n=3]] hello <b>there</b>", "hello there"),
    ("snake_case_name and _em_ and __strong__", "snake_case_name and em and strong"),
    ("\n\n   \n", ""),
])
def test_the_provisional_title_is_the_cleaned_first_line(prompt: str, title: str) -> None:
    assert titles.provisional_title(prompt) == title


def test_a_long_first_line_is_cut_at_a_word_boundary() -> None:
    title = titles.provisional_title("word " * 40)
    assert title.endswith("…") and len(title) <= titles.MAX_WIDTH + 1
    assert "wor…" not in title
    chinese = titles.provisional_title("羊" * 100)
    assert len(chinese) <= titles.MAX_WIDTH // 2 + 1


@pytest.mark.parametrize(("output", "title"), [
    ('Title: "Llama Facts."', "Llama Facts"),
    ("标题\uff1a《羊驼与骆驼》", "羊驼与骆驼"),
    ("**Sorting** in Python\nMore text", "Sorting in Python"),
    ("I'm sorry, but I can't help with that.", ""),
    ("抱歉\uff0c我无法回答。", ""),
    ("one two three four five six seven eight nine ten", "one two three four five six seven eight"),
    ("", ""),
])
def test_a_model_answer_becomes_a_plain_title(output: str, title: str) -> None:
    assert titles.title_from_model(output) == title


# --- the administrator's choice -------------------------------------------------------------------
def _model_form(config: ModelConfig, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "display_name": config.display_name, "sort_order": config.sort_order,
        "context_window": config.context_window, "max_input_chars": config.max_input_chars or "",
        "max_images": config.max_images, "max_image_bytes": config.max_image_bytes,
        "max_image_pixels": config.max_image_pixels, "max_image_side": config.max_image_side,
        "default_params": "{}", "price_input_per_mtok": config.price_input_per_mtok,
        "price_output_per_mtok": config.price_output_per_mtok, "currency": config.currency,
    }
    flags = {"enabled": config.enabled, "vision": config.vision,
             "requires_image": config.requires_image, "for_titles": config.for_titles}
    flags.update(changes)
    data.update({name: "on" for name, value in flags.items() if value})
    return data


def test_an_administrator_chooses_one_title_model(admin_user: Any) -> None:
    first, second = model("llama-3.2-3b"), model("llama-3-70b")
    client = signed_in(admin_user)
    page = client.get("/admin/providers/modelconfig/")
    assert page.status_code == 200 and "writes conversation titles" in page.content.decode().lower()
    for chosen in (first, second):
        response = client.post(f"/admin/providers/modelconfig/{chosen.pk}/change/",
                               _model_form(chosen, for_titles=True))
        assert response.status_code == 302, response.content.decode()[:2000]
        assert list(ModelConfig.objects.filter(for_titles=True)) == [chosen]


def test_a_model_that_needs_an_image_cannot_write_titles(admin_user: Any) -> None:
    vision = model("llama-3.2-90b-vision")
    response = signed_in(admin_user).post(
        f"/admin/providers/modelconfig/{vision.pk}/change/", _model_form(vision, for_titles=True))
    assert response.status_code == 200
    assert "cannot write titles" in response.content.decode()
    assert not ModelConfig.objects.filter(for_titles=True).exists()


def test_the_reaper_closes_a_title_call_whose_process_went_away(owner: Any) -> None:
    stale = _title_row(owner, finished=False)
    fresh = _title_row(owner, finished=False)
    UsageRecord.objects.filter(pk=stale.pk).update(
        started_at=timezone.now() - timedelta(seconds=reaper.TITLE_STALE_SECONDS + 5))
    reaper.reap_stale()
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert stale.finished_at is not None and stale.status == "interrupted"
    assert fresh.finished_at is None
