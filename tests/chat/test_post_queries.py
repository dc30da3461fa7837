"""The statements one message costs, through both doors: a count, never a time.

Every statement any thread runs is recorded with Django's own instrumentation
(`execute_wrappers`, on the test's connection and on every connection opened meanwhile: the
runner works on the thread pool), together with how many model calls the emulator had received
by then, so "before the provider is called" is read off the emulator, not guessed. Transaction
control (BEGIN, SAVEPOINT, RELEASE) is left out of the counts: SQLite sends BEGIN IMMEDIATE as a
statement, PostgreSQL's driver opens transactions by itself; what is counted is the same on both.

The numbers are exact so that a regression fails here; docs/performance.md ("the write path")
lists the statements and what they were before.
"""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import async_to_sync
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.test import AsyncClient

from conversations.api import tokens
from conversations.chat import services
from conversations.models import Conversation, MessageStatus
from providers.emulators import EmulatorServer
from tests.support import model, post_message, signed_in, wait_final

CONTROL = ("BEGIN", "SAVEPOINT", "RELEASE", "ROLLBACK", "COMMIT")


@dataclass
class Statement:
    thread: str
    model_calls: int  # model calls the emulator had received when the statement ran
    sql: str


@dataclass
class Seen:
    emulator: EmulatorServer
    statements: list[Statement] = field(default_factory=list)

    def model_calls(self) -> int:
        return sum(1 for r in self.emulator.requests if r.endpoint == "model")

    def wrapper(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if not sql.lstrip().upper().startswith(CONTROL):
            self.statements.append(Statement(threading.current_thread().name,
                                             self.model_calls(), " ".join(sql.split())))
        return execute(sql, params, many, context)

    def listing(self, statements: list[Statement]) -> str:
        return "\n".join(s.sql[:160] for s in statements)


@contextmanager
def every_statement(emulator: EmulatorServer) -> Iterator[Seen]:
    """Record what every connection runs, in any thread, while the block runs."""
    seen = Seen(emulator)

    watched: list[BaseDatabaseWrapper] = []

    def instrument(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
        if seen.wrapper not in connection.execute_wrappers:
            connection.execute_wrappers.append(seen.wrapper)
            watched.append(connection)

    connection_created.connect(instrument)
    # Connections already open in other threads too (the runner's pool threads keep theirs):
    # Django lists only the current thread's, so they are found among all live objects.
    for existing in gc.get_objects():
        if isinstance(existing, BaseDatabaseWrapper):
            instrument(None, existing)
    try:
        yield seen
    finally:
        connection_created.disconnect(instrument)
        for connection in watched:
            connection.execute_wrappers.remove(seen.wrapper)


def _followed_up(owner: Any) -> tuple[Conversation, Any]:
    """A conversation with one finished exchange: the next message is the usual case."""
    conversation = services.conversation_create(owner, model=model())
    client = signed_in(owner)
    first = post_message(client, conversation, "How do llamas sleep?")
    assert wait_final(first.json()["assistant"]["id"]).status == MessageStatus.COMPLETE
    return conversation, client


def test_it_posts_a_web_message_in_twelve_statements_replies_in_three_and_starts_in_two(
        owner: Any, emulated: EmulatorServer) -> None:
    conversation, client = _followed_up(owner)
    with every_statement(emulated) as seen:
        calls_before = seen.model_calls()
        response = post_message(client, conversation, "And alpacas?")
    assert response.status_code == 201
    assert wait_final(response.json()["assistant"]["id"]).status == MessageStatus.COMPLETE
    main = threading.current_thread().name
    runner = [s for s in seen.statements if s.thread != main]
    # Without a server loop (the sync test client) the answer runs when the POST commits:
    # the request's statements before the runner's first one stored the pair; after it, the
    # reply was rendered.
    first_runner = seen.statements.index(runner[0])
    stored = [s for s in seen.statements[:first_runner] if s.thread == main]
    replied = [s for s in seen.statements[first_runner:] if s.thread == main]
    before_provider = [s for s in runner if s.model_calls == calls_before]
    # Session, user, conversation; the model's visibility; then one transaction: the locked
    # conversation with its leaf, the user lock, idempotency, the limits (one read), budgets,
    # both messages in one insert, the ledger row, one update of the conversation.
    assert len(stored) == 12, seen.listing(stored)
    # The answer as it is now with its model; the prompt's siblings; whether the conversation
    # has documents (the template's own read for a finished answer). The new answer's siblings
    # are known (it is alone under its new prompt), and so are the prompt's images and
    # documents: the service stored none.
    assert len(replied) == 3, seen.listing(replied)
    # The claim (one update: the service handed over what it had read) and the branch in one
    # read, which also says whether any of it has images or documents (none here: neither is
    # read). The model's fallbacks are read only if its provider fails or its breaker is open.
    assert len(before_provider) == 2, seen.listing(before_provider)


def test_it_starts_a_v1_completion_with_six_statements_before_the_provider_call(
        owner: Any, emulated: EmulatorServer) -> None:
    secret = tokens.create_token(owner, "counts").secret
    body = {"model": "llama-3.2-3b", "stream": True,
            "messages": [{"role": "user", "content": "How do llamas sleep?"}]}

    async def complete() -> tuple[int, bytes]:
        response = await AsyncClient().post(
            "/v1/chat/completions", json.dumps(body), content_type="application/json",
            headers={"Authorization": f"Bearer {secret}"})
        chunks = [chunk async for chunk in response.streaming_content]
        return response.status_code, b"".join(chunks)

    # The first call of a process and of a token reads the bootstrap state and stamps the
    # token's last use (at most once a minute): the steady state is the second call.
    assert async_to_sync(complete)()[0] == 200
    with every_statement(emulated) as seen:
        calls_before = seen.model_calls()
        status, stream = async_to_sync(complete)()
    assert status == 200 and stream.endswith(b"data: [DONE]\n\n"), stream[-200:]
    before = [s for s in seen.statements if s.model_calls == calls_before]
    after = [s for s in seen.statements if s.model_calls > calls_before]
    # The token (with its user), the model's visibility, the user lock, the limits (one
    # read), budgets, the ledger row.
    assert len(before) == 6, seen.listing(before)
    assert len(after) == 1, seen.listing(after)  # the ledger row's outcome
