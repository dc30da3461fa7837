"""Answers survive a deploy: SIGTERM drains a daphne process (F16, F17).

A real daphne on the test database and the emulators: an answer in flight when SIGTERM arrives
finishes with the provider's exact text before the process exits; with a short DRAIN_SECONDS a
longer one is saved as interrupted, with its text, the moment the process stops. Meanwhile the
process refuses new answers with 503 and closes its sockets with 4012 (the page reconnects).
"""

from __future__ import annotations

import secrets
import signal
import time
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.test import Client
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conversations.chat import services
from conversations.models import Conversation, Message, MessageStatus
from tests.conftest import ARTIFACTS, ServerProcess, child_env
from tests.support import model

pytestmark = pytest.mark.django_db(transaction=True)


class Browser:
    """A signed-in session talking to the server over real sockets."""

    def __init__(self, server: ServerProcess, user: Any) -> None:
        client = Client()
        client.force_login(user)
        self.server = server
        self.cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
        self.csrf = secrets.token_hex(32)

    def headers(self) -> dict[str, str]:
        return {"Accept": "application/json", "X-CSRFToken": self.csrf,
                "Referer": self.server.url,
                "Cookie": f"{settings.SESSION_COOKIE_NAME}={self.cookie}; "
                          f"{settings.CSRF_COOKIE_NAME}={self.csrf}"}

    def post(self, conversation: Conversation, text: str) -> httpx.Response:
        return httpx.post(f"{self.server.url}/c/{conversation.pk}/messages/",
                          data={"text": text}, headers=self.headers(), timeout=30)

    def socket(self, conversation: Conversation) -> Any:
        url = self.server.url.replace("http://", "ws://") + f"/ws/c/{conversation.pk}/"
        return connect(url, origin=self.server.url,  # type: ignore[arg-type]
                       additional_headers={"Cookie": self.headers()["Cookie"]})


def _wait(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _streaming(answer_id: Any) -> bool:
    return Message.objects.get(pk=answer_id).status == MessageStatus.STREAMING


def _sent(emulated: Any) -> str:
    calls = [r for r in emulated.requests if r.vendor == "cloudflare" and r.endpoint == "model"]
    return str(calls[-1].sent_text)


def test_sigterm_lets_the_answer_in_flight_finish_with_its_exact_text(emulated: Any,
                                                                      owner: Any) -> None:
    server = ServerProcess(child_env(DRAIN_SECONDS="30"),
                           ARTIFACTS / "logs" / "daphne-drain-finish.log")
    try:
        browser = Browser(server, owner)
        conversation = services.conversation_create(owner, model=model())
        with browser.socket(conversation) as socket:
            assert '"hello"' in str(socket.recv(timeout=5))
            posted = browser.post(conversation, "Drain me [[emu:tokens n=50 rate=25]]")
            assert posted.status_code == 201, posted.text
            answer_id = posted.json()["assistant"]["id"]
            _wait(lambda: _streaming(answer_id), 10, "the answer never started")

            server.proc.send_signal(signal.SIGTERM)
            # The page's socket is told to reconnect ("service restart")...
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    socket.recv(timeout=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4012
            # ...and no new answer starts here while the process drains.
            refused = browser.post(conversation, "Too late")
            assert refused.status_code == 503 and refused.headers["Retry-After"]
            assert refused.json()["error"]["code"] == "server_restarting"
            assert server.proc.poll() is None  # still writing the answer
        server.proc.wait(timeout=20)
    finally:
        server.stop()
    answer = Message.objects.get(pk=answer_id)
    assert answer.status == MessageStatus.COMPLETE, (answer.status, answer.error_message)
    assert answer.content == _sent(emulated) != ""
    assert Message.objects.filter(conversation=conversation).count() == 2  # nothing else


def test_an_answer_longer_than_the_drain_is_saved_as_interrupted_with_its_text(
    emulated: Any, owner: Any
) -> None:
    server = ServerProcess(child_env(DRAIN_SECONDS="1"),
                           ARTIFACTS / "logs" / "daphne-drain-interrupt.log")
    try:
        browser = Browser(server, owner)
        conversation = services.conversation_create(owner, model=model())
        posted = browser.post(conversation, "A long one [[emu:tokens n=400 rate=20]]")
        assert posted.status_code == 201, posted.text
        answer_id = posted.json()["assistant"]["id"]
        _wait(lambda: _streaming(answer_id) and Message.objects.get(pk=answer_id).content, 10,
              "no text was saved")
        stopped_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=15)
        took = time.monotonic() - stopped_at
    finally:
        server.stop()
    answer = Message.objects.get(pk=answer_id)
    # Saved by the process itself as it stopped: no waiting for the reaper.
    assert answer.status == MessageStatus.INTERRUPTED, answer.status
    assert answer.content and _sent(emulated).startswith(answer.content)
    assert took < 10, f"the process took {took:.1f} s to stop"
