"""A Celery worker killed in the middle of a vision answer (F12, F13).

Needs the PostgreSQL + Redis configuration (REDIS_URL set): real `celery worker` processes on
the test database, providers pointed at the emulators. Each test's workers consume a queue of
their own, so a session-wide worker started by another test cannot take these tasks.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from chatsite.celery import app
from conversations.answers.reaper import reap_stale
from conversations.answers.tasks import generate_answer
from conversations.chat import services
from conversations.models import Message, MessageStatus
from tests.conftest import ARTIFACTS, ROOT, WorkerProcess, child_env
from tests.images.image_corpus import png_rgba
from tests.support import model, post_message, signed_in

pytestmark = [
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not settings.REDIS_URL, reason=(
        "needs REDIS_URL (a real broker and Celery workers): runs in the PostgreSQL + Redis "
        "CI configuration")),
]


class QueueWorker(WorkerProcess):
    """A WorkerProcess on one queue, in a session of its own so its process tree can be
    SIGKILLed as a whole, like an OOM kill or a pulled plug."""

    def __init__(self, env: dict[str, str], log_path: Path, name: str, queue: str) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.name = f"{name}@{socket.gethostname()}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "chatsite", "worker", "--loglevel=INFO",
             "--concurrency=1", "--without-gossip", "--without-mingle", "--without-heartbeat",
             "-Q", queue, "-n", self.name],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def kill_all(self) -> None:
        """SIGKILL the main process and its pool children at once: nothing gets to clean up."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        # The test is over: no task of interest is running, so no warm shutdown to wait for.
        if self.proc.poll() is None:
            self.kill_all()
        elif not self._log.closed:
            self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pool_children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()]


@pytest.fixture
def dedicated_queue() -> Iterator[str]:
    """Tasks sent by this test process go to a queue only this test's workers consume."""
    queue = f"vision-test-{uuid.uuid4().hex[:12]}"
    previous = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    yield queue
    app.conf.task_default_queue = previous


def wait_until(condition: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def media(settings: Any, tmp_path: Path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return root


@pytest.fixture
def workers(media: Path, dedicated_queue: str) -> Iterator[list[QueueWorker]]:
    started: list[QueueWorker] = []
    yield started
    for worker in started:
        worker.stop()


def start_worker(started: list[QueueWorker], media: Path, queue: str, name: str) -> QueueWorker:
    env = child_env(MEDIA_ROOT=str(media))
    worker = QueueWorker(env, ARTIFACTS / "logs" / f"celery-vision-{name}.log", name, queue)
    started.append(worker)
    return worker


def image_calls(emulated: Any) -> list[Any]:
    return [r for r in emulated.requests if r.vendor == "cloudflare" and r.endpoint == "model"
            and isinstance(r.json, dict) and "image" in r.json]


def post_slow_vision_prompt(owner: Any) -> Message:
    """Post a vision prompt through the view (it dispatches to Celery) and wait until the
    worker has saved some of a slow answer."""
    conversation = services.conversation_create(owner, model=model("llama-3.2-11b-vision"))
    client = signed_in(owner)
    handle = io.BytesIO(png_rgba())
    handle.name = "llama.png"
    image_id = client.post("/uploads/", {"image": handle},
                           HTTP_ACCEPT="application/json").json()["id"]
    response = post_message(client, conversation, "Describe slowly [[emu:tokens n=200 rate=20]]",
                            attachments=[image_id])
    assert response.status_code == 201, response.content
    answer_id = response.json()["assistant"]["id"]

    def streaming_with_text() -> Message | None:
        answer = Message.objects.get(pk=answer_id)
        ok = answer.status == MessageStatus.STREAMING and len(answer.content) > 10
        return answer if ok else None

    running: Message = wait_until(streaming_with_text, what="a partial answer from the worker")
    assert running.runner.split(":")[1] != str(os.getpid())  # written by a worker, not us
    return running


def assert_one_interrupted_attempt(emulated: Any, answer_id: Any, partial: str) -> None:
    later = timezone.now() + timedelta(seconds=settings.GENERATION_STALE_SECONDS + 60)
    reaped = reap_stale(now=later)
    assert [message_id for _c, message_id, _s in reaped] == [answer_id]
    answer = Message.objects.get(pk=answer_id)
    assert answer.status == MessageStatus.INTERRUPTED
    assert answer.error_code == "interrupted"
    assert answer.content == partial  # the partial text is kept as it was
    [call] = image_calls(emulated)  # exactly one provider call for this attempt
    assert call.sent_text.startswith(partial)
    assert call.outcome != "complete"
    assert answer.parent is not None
    assert list(answer.parent.children.values_list("pk", flat=True)) == [answer.pk]
    assert Message.objects.filter(conversation=answer.conversation_id).count() == 2
    assert reap_stale(now=later) == []


def test_a_worker_killed_mid_answer_leaves_one_interrupted_answer_and_one_provider_call(
    emulated: Any, owner: Any, media: Path, dedicated_queue: str, workers: list[QueueWorker]
) -> None:
    emulated.set_cloudflare_licence(True)
    first = start_worker(workers, media, dedicated_queue, "doomed")
    running = post_slow_vision_prompt(owner)
    answer_id = str(running.pk)
    first.kill_all()
    partial = Message.objects.get(pk=answer_id).content
    assert partial

    # A second worker, and the same task delivered again (what Redis does once the
    # visibility timeout passes for the dead worker's unacknowledged message).
    second = start_worker(workers, media, dedicated_queue, "heir")
    redelivered = generate_answer.delay(answer_id)
    wait_until(lambda: f"[{redelivered.id}] succeeded" in second.log_text(),
               what="the second worker to finish the redelivered task")

    assert_one_interrupted_attempt(emulated, running.pk, partial)


def test_a_pool_child_killed_mid_answer_is_not_run_again(
    emulated: Any, owner: Any, media: Path, dedicated_queue: str, workers: list[QueueWorker]
) -> None:
    """The OOM killer picks the pool child, and the worker's main process survives: the task is
    acknowledged as lost, not requeued, so the provider is not called a second time."""
    emulated.set_cloudflare_licence(True)
    worker = start_worker(workers, media, dedicated_queue, "oom")
    running = post_slow_vision_prompt(owner)
    [child_pid] = worker.pool_children()  # --concurrency=1: the child running the answer
    os.kill(child_pid, signal.SIGKILL)
    wait_until(lambda: "WorkerLostError" in worker.log_text(), what="the lost task to be noticed")
    partial = Message.objects.get(pk=running.pk).content
    # A task sent after the loss: once it has run, a requeued answer would have run too.
    marker = app.send_task("chatsite.ping")
    wait_until(lambda: f"[{marker.id}] succeeded" in worker.log_text(),
               what="the worker to run the next task")
    assert worker.log_text().count("conversations.generate_answer[") == 1  # received once
    assert_one_interrupted_attempt(emulated, running.pk, partial)
