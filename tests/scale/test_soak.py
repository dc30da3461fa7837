"""The soak test: 50 users at once, the web page and /v1 mixed, provider faults injected at
random, for a bounded time, against a real daphne on PostgreSQL + Redis with a Celery worker.

Afterwards: no answer is left queued or streaming, every stored answer's text is exactly what
the emulator sent for it, there is one ledger row per answer, nobody went past the limits,
and the server logged no error 500.
"""

from __future__ import annotations

import random
import secrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from conversations.api import tokens
from conversations.chat import services
from conversations.models import ACTIVE_STATUSES, Message, UsageRecord
from tests.conftest import ARTIFACTS, ServerProcess, child_env
from tests.support import model

SCALED_OUT = bool(settings.REDIS_URL) and settings.DATABASES["default"]["ENGINE"].endswith(
    "postgresql")

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not SCALED_OUT, reason="the soak test runs in CI's PostgreSQL + Redis "
                                              "configuration (DATABASE_URL and REDIS_URL)"),
    pytest.mark.django_db(transaction=True),
]

USERS = 50
REQUESTS = 150
SECONDS = 90  # the whole run stops by then, whatever is left
RATE_LIMIT = 5
CONCURRENCY = 2
FAULTS = ["", "", "", "[[emu:error-after n=3]]", "[[emu:drop-after n=2]]",
          "[[emu:500-before]]", "[[emu:429-before]]", "[[emu:tokens n=60 rate=60]]"]


def _session(user: Any) -> tuple[str, str]:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value, secrets.token_hex(32)


def _web(server: ServerProcess, session: tuple[str, str], conversation: str, text: str) -> int:
    cookie, csrf = session
    reply = httpx.post(f"{server.url}/c/{conversation}/messages/", data={
        "text": text, "client_id": str(uuid.uuid4())}, headers={
        "Accept": "application/json", "X-CSRFToken": csrf, "Referer": server.url,
        "Cookie": f"{settings.SESSION_COOKIE_NAME}={cookie}; {settings.CSRF_COOKIE_NAME}={csrf}",
    }, timeout=30)
    return reply.status_code


def _api(server: ServerProcess, secret: str, text: str) -> int:
    try:
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={
                "model": "llama-3.2-3b", "stream": True,
                "messages": [{"role": "user", "content": text}]},
                headers={"Authorization": f"Bearer {secret}"}, timeout=30) as reply:
            for _line in reply.iter_lines():
                pass
            return reply.status_code
    except httpx.HTTPError:
        return 0


def test_fifty_users_mixed_web_and_api_with_random_faults(emulated: Any,
                                                         celery_worker_process: Any) -> None:
    users = [get_user_model().objects.create_user(f"soak{n}", password="x" * 20)
             for n in range(USERS)]
    conversations = {u.pk: str(services.conversation_create(u, model=model()).pk) for u in users}
    sessions = {u.pk: _session(u) for u in users}
    secrets_ = {u.pk: tokens.create_token(u, "soak").secret for u in users}
    server = ServerProcess(child_env(RATE_LIMIT_PER_MINUTE=str(RATE_LIMIT),
                                     MAX_CONCURRENT_ANSWERS=str(CONCURRENCY),
                                     PROVIDER_READ_TIMEOUT="2"),
                           ARTIFACTS / "logs" / "daphne-soak.log")
    rng = random.Random(20261206)
    plan = [(rng.choice(users), rng.choice(["web", "api"]), rng.choice(FAULTS))
            for _ in range(REQUESTS)]
    started = time.monotonic()
    statuses: list[int] = []

    def run(item: tuple[Any, str, str]) -> None:
        user, door, fault = item
        if time.monotonic() - started > SECONDS:
            return
        text = f"soak {uuid.uuid4().hex} {fault}"
        if door == "web":
            statuses.append(_web(server, sessions[user.pk], conversations[user.pk], text))
        else:
            statuses.append(_api(server, secrets_[user.pk], text))

    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(run, plan))
        deadline = time.monotonic() + 30
        while Message.objects.filter(status__in=ACTIVE_STATUSES).exists():
            assert time.monotonic() < deadline, "answers left queued or streaming"
            time.sleep(0.2)
    finally:
        server.stop()

    assert statuses and 500 not in statuses
    assert set(statuses) <= {200, 201, 400, 409, 429, 502}, sorted(set(statuses))
    answers = list(Message.objects.filter(role="assistant"))
    assert answers, "no answer was started"
    sent = {}
    for record in emulated.requests:
        if record.vendor == "cloudflare" and record.endpoint == "model":
            prompt = (record.json or {}).get("messages", [{}])[-1].get("content", "")
            sent[prompt] = record.sent_text
    for answer in answers:
        prompt = Message.objects.get(pk=answer.parent_id).content
        if prompt in sent:  # an answer refused before any call has no record
            assert answer.content == sent[prompt], (answer.status, answer.error_code)
        else:
            assert answer.content == ""
    # One ledger row per answer, web and API alike, every one finished.
    web_rows = UsageRecord.objects.filter(source=UsageRecord.Source.WEB)
    assert web_rows.count() == len(answers)
    assert not UsageRecord.objects.filter(finished_at__isnull=True).exists()
    # Nobody started more answers than the rate limit allows in any minute of the run.
    for user in users:
        times = sorted(UsageRecord.objects.filter(user=user).values_list("started_at",
                                                                         flat=True))
        for index, moment in enumerate(times):
            in_minute = [t for t in times[index:] if (t - moment).total_seconds() < 60]
            assert len(in_minute) <= RATE_LIMIT, user.username
    log = server.log_text()
    assert "Internal Server Error" not in log and "Traceback" not in log
