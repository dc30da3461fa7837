"""Messages in the reader's language: a failed answer keeps its code and the English text made
when it failed; every page (and every socket) draws it in the language of whoever reads it.

Answers fail through the emulators (`[[emu:...]]` in a prompt); without a server loop the answer
runs inline in the POST.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client
from django.utils import timezone, translation

from chatsite.asgi import application
from conversations.answers.runner import run_generation
from conversations.chat import services
from conversations.errors import answer_error_text
from conversations.models import Conversation, Message, MessageStatus, UsageRecord
from tests.support import model, post_message, queue_answer, signed_in

pytestmark = pytest.mark.django_db(transaction=True)
CHINESE = "zh-hans"
AUTH_EN = "The provider refused our credentials. An administrator has to fix the key."
AUTH_ZH = "服务商拒绝了我们的凭据。需要管理员修正密钥。"


def _reader(user: Any, language: str) -> Client:
    client = signed_in(user)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = language
    return client


def _failed_answer(owner: Any, text: str = "Hello [[emu:auth-before]]") -> Message:
    conversation = services.conversation_create(owner, model=model())
    response = post_message(signed_in(owner), conversation, text)
    answer = Message.objects.get(pk=response.json()["assistant"]["id"])
    assert answer.status == MessageStatus.FAILED
    return answer


def _note(html: str) -> str:
    found = re.search(r'<div class="msg-note[^"]*" data-note>(.*?)</div>', html, re.S)
    assert found, "no failure note on the page"
    return " ".join(found.group(1).split())


def test_a_failed_answer_reads_in_chinese_for_a_chinese_reader(emulated: Any,
                                                               owner: Any) -> None:
    answer = _failed_answer(owner)
    assert answer.error_code == "auth" and answer.error_message == AUTH_EN  # stored in English
    page = _reader(owner, CHINESE).get(f"/c/{answer.conversation_id}/")
    note = _note(page.content.decode())
    assert AUTH_ZH in note and "provider" not in note
    fragment = _reader(owner, CHINESE).get(f"/c/{answer.conversation_id}/m/{answer.pk}/")
    assert AUTH_ZH in _note(fragment.content.decode())


def test_the_same_failed_answer_reads_in_english_for_an_english_reader(emulated: Any,
                                                                       owner: Any) -> None:
    answer = _failed_answer(owner)
    note = _note(_reader(owner, "en").get(f"/c/{answer.conversation_id}/").content.decode())
    assert AUTH_EN in note and "服务商" not in note


def test_a_vendors_own_words_follow_the_translated_text(emulated: Any, owner: Any) -> None:
    conversation = services.conversation_create(owner, model=model())
    emulated.script("cloudflare", "500-before", times=None)
    response = post_message(signed_in(owner), conversation, "Hello")
    answer = Message.objects.get(pk=response.json()["assistant"]["id"])
    assert answer.error_code == "unavailable"
    note = _note(_reader(owner, CHINESE).get(f"/c/{conversation.pk}/").content.decode())
    if answer.error_message == "The provider is unavailable right now. Retry in a moment.":
        assert note.startswith("服务商暂时不可用")
    else:  # the client's own text (with the vendor's code) is kept after the Chinese one
        assert note.startswith("服务商暂时不可用。请稍后重试。 (")
        assert answer.error_message in note


def test_a_stored_text_with_the_models_name_is_drawn_again_in_chinese(owner: Any) -> None:
    text = ("Llama X needs an image in the conversation, and none is stored any more: attach "
            "an image again.")
    with translation.override(CHINESE):
        drawn = answer_error_text("image_required", text, model="Llama X")
    assert drawn == "Llama X 需要对话中有一张图片\uff0c但已没有保存的图片\uff1a请重新附上一张图片。"
    with translation.override(CHINESE):  # unknown words of a known code: the code's text
        assert answer_error_text("context_length_exceeded", "Too long: 9,999 tokens.") == (
            "这条消息对该模型来说太长。请缩短消息或选择上下文更大的模型。")
        assert answer_error_text("some_new_code", "Plain English.") == "Plain English."
    with translation.override("en"):
        assert answer_error_text("image_required", text, model="Llama X") == text


def test_token_counts_read_in_chinese(emulated: Any, owner: Any) -> None:
    conversation = services.conversation_create(owner, model=model())
    response = post_message(signed_in(owner), conversation, "Hello")
    answer = Message.objects.get(pk=response.json()["assistant"]["id"])
    html = _reader(owner, CHINESE).get(f"/c/{conversation.pk}/").content.decode()
    assert f"{answer.prompt_tokens} → {answer.completion_tokens} 词元" in html
    assert " tokens" not in html.split('id="messages"', 1)[-1].split("</main>", 1)[0]


# --- the socket ---------------------------------------------------------------------------------
async def _socket(user: Any, conversation: Conversation, language: str) -> WebsocketCommunicator:
    def login() -> str:
        client = Client()
        client.force_login(user)
        return client.cookies[settings.SESSION_COOKIE_NAME].value

    session = await database_sync_to_async(login)()
    cookie = (f"{settings.SESSION_COOKIE_NAME}={session}; "
              f"{settings.LANGUAGE_COOKIE_NAME}={language}").encode()
    return WebsocketCommunicator(application, f"/ws/c/{conversation.pk}/", headers=[
        (b"origin", b"http://localhost:8000"), (b"cookie", cookie)])


async def _final_state(socket: WebsocketCommunicator) -> dict[str, Any]:
    while True:
        frame = json.loads(await socket.receive_from(15))
        if isinstance(frame, dict) and frame.get("type") == "state" and frame["status"] not in (
                "queued", "streaming"):
            return frame


@pytest.mark.asyncio
@pytest.mark.parametrize(("language", "expected"), [(CHINESE, AUTH_ZH), ("en", AUTH_EN)])
async def test_the_final_frame_carries_the_code_and_the_message_in_the_sockets_language(
        emulated: Any, owner: Any, language: str, expected: str) -> None:
    def start() -> tuple[Conversation, Message]:
        conversation = services.conversation_create(owner, model=model())
        return conversation, queue_answer(owner, conversation, "Hi [[emu:auth-before]]")

    conversation, answer = await database_sync_to_async(start)()
    socket = await _socket(owner, conversation, language)
    assert (await socket.connect(timeout=5))[0]  # the PostgreSQL + Redis stack under load
    task = asyncio.create_task(run_generation(answer.pk))
    final = await _final_state(socket)
    await task
    assert final["error_code"] == "auth" and final["error_message"] == expected
    # A resync of the ended answer is answered from the database, in the same language.
    await socket.send_json_to({"type": "resync", "seq": answer.seq})
    assert (await _final_state(socket))["error_message"] == expected
    await socket.disconnect()


# --- the operations console ---------------------------------------------------------------------
def _column_headers(html: str) -> list[str]:
    main = html.split('id="content"', 1)[-1]
    cells = re.findall(r'<th scope="col"[^>]*>(.*?)</th>', main, re.S)
    return [" ".join(re.sub(r"<[^>]+>", " ", cell).split()) for cell in cells]


def test_the_consoles_columns_read_in_chinese(admin_user: Any, owner: Any) -> None:
    llama = model()
    UsageRecord.objects.create(user=owner, model=llama, purpose="title", prompt_tokens=3,
                               completion_tokens=2, status="complete",
                               finished_at=timezone.now())
    reader = _reader(admin_user, CHINESE)
    pages = {
        "/admin/conversations/usagerecord/": [
            "开始时间", "用途", "状态", "输入词元", "输出词元", "首个词元用时\uff08毫秒\uff09",
            "耗时\uff08毫秒\uff09"],
        "/admin/providers/modelconfig/": ["撰写对话标题", "每百万输入词元价格"],
        "/admin/providers/provider/": ["最近延迟\uff08毫秒\uff09", "最近检查"],
    }
    for url, expected in pages.items():
        response = reader.get(url)
        assert response.status_code == 200, url
        headers = _column_headers(response.content.decode())
        for label in expected:
            assert label in headers, (url, label, headers)
        english = [h for h in headers if re.search(r"[A-Za-z]{3,}", h)
                   and not re.search(r"[\u4e00-\u9fff]", h)]
        assert english == [], (url, english)
    usage = reader.get("/admin/conversations/usagerecord/").content.decode()
    assert ">标题<" in usage  # the purpose of the row, translated


def test_the_consoles_columns_stay_english_for_an_english_reader(admin_user: Any,
                                                                 owner: Any) -> None:
    UsageRecord.objects.create(user=owner, model=model(), purpose="title")
    headers = _column_headers(_reader(admin_user, "en").get(
        "/admin/conversations/usagerecord/").content.decode())
    assert "Started" in headers and "Purpose" in headers


def test_generation_parameters_read_in_chinese(owner: Any) -> None:
    model()
    page = _reader(owner, CHINESE).get("/").content.decode()
    assert "最大词元数" in page and "温度" in page
    assert "整数\uff0c1 ≤ 值 ≤ 8192" in page
    assert "Longest answer" not in page and "an integer" not in page
    english = _reader(owner, "en").get("/").content.decode()
    assert "Max tokens" in english and "an integer, 1 ≤ value ≤ 8192" in english
