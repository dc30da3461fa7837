"""A rolling restart under load (F16, F17): two daphne processes and a Celery worker on
PostgreSQL + Redis, 20 answers in flight, SIGTERM to one daphne and to the worker.

Every answer that could end within the drain ends `complete` with exactly the emulator's text;
the pages' sockets on the stopped process are told to reconnect (4012) and do, on the other
process, where a resync gives each answer's final state; no provider call is made twice.
"""

from __future__ import annotations

import contextlib
import io
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from django.conf import settings
from websockets.exceptions import ConnectionClosed

from conversations.chat import services
from conversations.models import ACTIVE_STATUSES, Message, MessageStatus
from tests.answers.test_celery_vision import QueueWorker
from tests.answers.test_drain import Browser
from tests.conftest import ARTIFACTS, ServerProcess, child_env
from tests.images import image_corpus as corpus
from tests.support import model

SCALED_OUT = bool(settings.REDIS_URL) and settings.DATABASES["default"]["ENGINE"].endswith(
    "postgresql")

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not SCALED_OUT, reason="needs PostgreSQL and Redis (CI's second run)"),
    pytest.mark.django_db(transaction=True),
]

TEXT = "[[emu:tokens n=60 rate=20]]"  # about 3 s


def _upload(browser: Browser) -> str:
    handle = io.BytesIO(corpus.encode(corpus.noise((64, 64)), "PNG"))
    reply = httpx.post(f"{browser.server.url}/uploads/", files={
        "image": ("photo.png", handle, "image/png")}, headers=browser.headers(), timeout=30)
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


def test_a_rolling_restart_loses_no_answer(emulated: Any, owner: Any,
                                          django_db_blocker: Any) -> None:
    queue = f"drain-{uuid.uuid4().hex[:10]}"
    env = child_env(DRAIN_SECONDS="20", CELERY_QUEUE=queue, MAX_CONCURRENT_ANSWERS="50",
                    RATE_LIMIT_PER_MINUTE="100", PROVIDER_READ_TIMEOUT="5")
    logs = ARTIFACTS / "logs"
    stopping = ServerProcess(env, logs / "daphne-drain-a.log")
    staying = ServerProcess(env, logs / "daphne-drain-b.log")
    worker_env = {**env, "SITE_URL": staying.url}
    worker = QueueWorker(worker_env, logs / "celery-drain.log", "drain", queue)
    replacement: QueueWorker | None = None
    sockets: list[Any] = []
    opened = contextlib.ExitStack()
    try:
        on_a, on_b = Browser(stopping, owner), Browser(staying, owner)
        text_chats = [services.conversation_create(owner, model=model()) for _ in range(16)]
        vision_chats = [services.conversation_create(owner, model=model("llama-3.2-11b-vision"))
                        for _ in range(4)]
        for chat in text_chats[:8]:  # the pages watching the process that will stop
            socket = opened.enter_context(on_a.socket(chat))
            assert '"hello"' in str(socket.recv(timeout=5))
            sockets.append((chat, socket))
        images = [_upload(on_b) for _ in vision_chats]
        jobs = [(on_a if n < 10 else on_b, chat, f"t{n} {uuid.uuid4().hex} {TEXT}", None)
                for n, chat in enumerate(text_chats)]
        jobs += [(on_b, chat, f"v{n} {uuid.uuid4().hex} {TEXT}", image)
                 for n, (chat, image) in enumerate(zip(vision_chats, images, strict=True))]

        def post(job: Any) -> str:
            browser, chat, text, image = job
            data = {"text": text} | ({"attachments": image} if image else {})
            reply = httpx.post(f"{browser.server.url}/c/{chat.pk}/messages/", data=data,
                               headers=browser.headers(), timeout=30)
            assert reply.status_code == 201, reply.text
            return str(reply.json()["assistant"]["id"])

        with ThreadPoolExecutor(max_workers=8) as pool:
            answer_ids = list(pool.map(post, jobs))
        # Every text answer is being written; the worker (one at a time) has one vision answer
        # in hand, the rest wait in its queue for the worker that replaces it.
        deadline = time.monotonic() + 15
        while Message.objects.filter(pk__in=answer_ids[:16],
                                     status=MessageStatus.QUEUED).exists() or not (
                Message.objects.filter(pk__in=answer_ids[16:],
                                       status=MessageStatus.STREAMING).exists()):
            assert time.monotonic() < deadline, "answers never started"
            time.sleep(0.05)

        stopping.proc.send_signal(signal.SIGTERM)
        worker.proc.send_signal(signal.SIGTERM)
        for _chat, socket in sockets:  # told to reconnect, and they do, on the other process
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    socket.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4012
        stopping.proc.wait(timeout=40)
        worker.proc.wait(timeout=40)
        replacement = QueueWorker(worker_env, logs / "celery-drain-2.log", "drain2", queue)
        deadline = time.monotonic() + 30
        while Message.objects.filter(pk__in=answer_ids, status__in=ACTIVE_STATUSES).exists():
            assert time.monotonic() < deadline, "answers left running"
            time.sleep(0.1)
        for chat, _socket in sockets:
            with on_b.socket(chat) as again:
                assert '"hello"' in str(again.recv(timeout=5))
                answer = Message.objects.filter(conversation=chat, role="assistant").get()
                again.send(f'{{"type": "resync", "seq": {answer.seq}}}')
                state = str(again.recv(timeout=5))
                assert '"state"' in state and '"complete"' in state, state
    finally:
        opened.close()
        stopping.stop()
        staying.stop()
        worker.stop()
        if replacement is not None:
            replacement.stop()

    model_calls = [r for r in emulated.requests
                   if r.vendor == "cloudflare" and r.endpoint == "model" and r.status == 200]
    for answer_id, (_browser, _chat, text, _image) in zip(answer_ids, jobs, strict=True):
        answer = Message.objects.get(pk=answer_id)
        assert answer.status == MessageStatus.COMPLETE, (text[:3], answer.status,
                                                         answer.error_message)
        calls = [c for c in model_calls if text in str(c.json)]
        assert len(calls) == 1, (text[:3], len(calls))  # no answer asked twice
        assert answer.content == calls[0].sent_text != ""


def test_a_worker_whose_drain_runs_out_saves_the_answer_as_interrupted(
    emulated: Any, owner: Any
) -> None:
    queue = f"drain-{uuid.uuid4().hex[:10]}"
    env = child_env(DRAIN_SECONDS="1", CELERY_QUEUE=queue, PROVIDER_READ_TIMEOUT="5")
    logs = ARTIFACTS / "logs"
    server = ServerProcess(env, logs / "daphne-drain-worker.log")
    worker = QueueWorker({**env, "SITE_URL": server.url}, logs / "celery-drain-short.log",
                         "short", queue)
    try:
        browser = Browser(server, owner)
        chat = services.conversation_create(owner, model=model("llama-3.2-11b-vision"))
        image = _upload(browser)
        reply = httpx.post(f"{server.url}/c/{chat.pk}/messages/", data={
            "text": "Long [[emu:tokens n=400 rate=20]]", "attachments": image},
            headers=browser.headers(), timeout=30)
        assert reply.status_code == 201, reply.text
        answer_id = reply.json()["assistant"]["id"]
        deadline = time.monotonic() + 15
        while not Message.objects.filter(pk=answer_id, status=MessageStatus.STREAMING).exclude(
                content="").exists():
            assert time.monotonic() < deadline, "the answer never started"
            time.sleep(0.05)
        worker.proc.send_signal(signal.SIGTERM)
        worker.proc.wait(timeout=20)  # far sooner than the 20 s answer
    finally:
        server.stop()
        worker.stop()
    answer = Message.objects.get(pk=answer_id)
    assert answer.status == MessageStatus.INTERRUPTED, answer.status
    assert answer.content  # its text is kept


def test_an_idle_socket_and_a_long_answer_outlive_the_redis_timeouts_on_both_layers(
    emulated: Any, owner: Any
) -> None:
    """channels_redis' core layer blocks 5 s per read and redis-py times sockets out (30 s
    here): a page idle for longer, and an answer streaming for longer, must both live on, with
    the core layer and with pub/sub."""
    servers = [ServerProcess(child_env(CHANNEL_LAYER=layer, PROVIDER_READ_TIMEOUT="10"),
                             ARTIFACTS / "logs" / f"daphne-idle-{layer}.log")
               for layer in ("core", "pubsub")]
    opened = contextlib.ExitStack()
    try:
        browsers = [Browser(server, owner) for server in servers]
        chats = [services.conversation_create(owner, model=model()) for _ in servers]
        quiet = [services.conversation_create(owner, model=model()) for _ in servers]
        # A page on a conversation nobody writes to: nothing crosses its socket meanwhile.
        idle = [opened.enter_context(browser.socket(chat))
                for browser, chat in zip(browsers, quiet, strict=True)]
        for socket in idle:
            assert '"hello"' in str(socket.recv(timeout=5))
        answers = []
        for browser, chat in zip(browsers, chats, strict=True):
            reply = browser.post(chat, "Slow and long [[emu:tokens n=40 rate=1.1]]")  # ~36 s
            assert reply.status_code == 201, reply.text
            answers.append(reply.json()["assistant"]["id"])
        deadline = time.monotonic() + 70
        while Message.objects.filter(pk__in=answers, status__in=ACTIVE_STATUSES).exists():
            assert time.monotonic() < deadline, "an answer stopped streaming"
            time.sleep(0.5)
        for socket in idle:  # alive after the answer, past both timeouts: it answers a ping
            socket.send('{"type": "ping", "ref": 9}')
            while '"pong"' not in (frame := str(socket.recv(timeout=5))):
                assert '"revoked"' not in frame
    finally:
        opened.close()
        for server in servers:
            server.stop()
    for answer_id in answers:
        answer = Message.objects.get(pk=answer_id)
        assert answer.status == MessageStatus.COMPLETE, (answer.status, answer.error_message)
