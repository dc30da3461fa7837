"""On the Redis stack a server answering Sends one after another reuses its Redis
connections (chatsite/cache.py): Django's cache opened one per request and per call off the
loop (issue 16)."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from django.conf import settings

from conversations.chat import services
from conversations.models import MessageStatus
from tests.api.conftest import ApiServer
from tests.support import model, post_live, wait_final

pytestmark = [
    pytest.mark.skipif(not settings.REDIS_URL, reason="the embedded defaults keep the cache in "
                       "memory (PostgreSQL + Redis run)"),
    pytest.mark.django_db(transaction=True),
]

SENDS = 12


def _connections_received() -> int:
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        return int(client.info("stats")["total_connections_received"])
    finally:
        client.close()


def test_a_server_answering_sends_in_a_row_reuses_its_redis_connections(
        api_server: ApiServer, emulated: Any, owner: Any) -> None:
    conversation = services.conversation_create(owner, model=model())

    def send(text: str) -> None:
        response = post_live(api_server.url, owner, conversation, text)
        assert response.status_code == 201, response.text[:300]
        answer = wait_final(response.json()["assistant"]["id"])
        assert answer.status == MessageStatus.COMPLETE, answer.status

    send("Warm up")  # the server's pools fill on its first answers
    before = _connections_received()
    for number in range(SENDS):
        send(f"Question {number}")
    # Each Send reads the circuit breaker in its request, and off the loop clears it and reads
    # its provider's status when the answer ends: with Django's backend each of the three
    # opened a new connection (37 here).
    assert _connections_received() - before <= 4
