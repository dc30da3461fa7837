"""Scale-out: two daphne processes and a Celery worker on one PostgreSQL and one Redis.

A viewer connected to process 1 watches answers written elsewhere: a text answer running as an
asyncio task in process 2 (claimed by process 2 alone, the provider called once), a vision answer
running in the Celery worker. A viewer joining late catches up from the writer's snapshot, sent
across processes. Stop pressed on process 1 cancels the upstream request process 2 makes. When
process 2 dies mid-answer (SIGKILL, or the SIGTERM of a restart), nothing is lost: process 1's
reaper marks the answer interrupted with its saved text and tells the viewer, nothing stays
streaming, and a restarted process 2 takes the next prompt of the same conversation.

Everything goes over real sockets: HTTP and websockets to the daphne processes, the providers'
wire formats to an emulator in this process. Runs in CI's second configuration (PostgreSQL +
Redis); skipped on the embedded defaults, where there is nothing to scale out.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from PIL import Image
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError
from websockets.typing import Origin

from conversations.answers import reaper
from conversations.chat import services
from conversations.models import (
    ACTIVE_STATUSES,
    Conversation,
    Message,
    MessageStatus,
    UsageRecord,
)
from providers.emulators import Credentials, EmulatorServer, RecordedRequest
from providers.emulators.answer import tokenize
from providers.models import ModelConfig
from tests.conftest import ARTIFACTS, ServerProcess, WorkerProcess, child_env
from tests.support import point_providers_at, seed_catalogue

SCALED_OUT = bool(settings.REDIS_URL) and settings.DATABASES["default"]["ENGINE"].endswith(
    "postgresql")

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(
        not SCALED_OUT,
        reason="scale-out needs PostgreSQL and Redis (set DATABASE_URL=postgres://... and "
               "REDIS_URL=redis://...); it runs in CI's second configuration"),
    pytest.mark.django_db(transaction=True),
]

LOGS = ARTIFACTS / "logs"
TEXT_MODEL = "llama-3.2-3b"
VISION_MODEL = "llama-3.2-11b-vision"
# Process 1 reaps answers whose writer was silent this long; the other processes keep the
# default (45 s), so process 1's reaper is the one that finishes a dead process's answer. A little
# above the smallest accepted value (5): a loaded machine may delay a save by a second or so.
STALE_SECONDS = 6
REAPER_INTERVAL = 15.0  # reaper.reaper_loop's default pass interval
SLOW_TOKENS = 300
SLOW = f"[[emu:tokens n={SLOW_TOKENS} rate=20]]"  # 15 s of answer: time to stop or kill it
FINAL = {"complete", "stopped", "failed", "interrupted"}
ACK_EVERY = 64 * 1024
IDLE_SECONDS = 7  # longer than the 5 s of IDLE_LAYER_BUG
RECONNECT_DELAY = 0.5  # the page's first retry delay
CLOSE_FOR_GOOD = {4401, 4403, 4408}  # the page does not reconnect after these


def _layer_reads_time_out() -> bool:
    """True when an idle channel-layer receive fails instead of waiting (see IDLE_LAYER_BUG)."""
    if not SCALED_OUT:
        return False
    from channels.layers import get_channel_layer
    from channels_redis.core import RedisChannelLayer
    from channels_redis.utils import create_pool

    layer: Any = get_channel_layer()
    if not isinstance(layer, RedisChannelLayer):  # pub/sub has no blocking list reads
        return False
    timeout = create_pool(layer.hosts[0]).make_connection().socket_timeout
    return timeout is not None and timeout <= layer.brpop_timeout


IDLE_LAYER_BUG = pytest.mark.xfail(
    _layer_reads_time_out(), strict=True,
    reason="chatsite/settings.py CHANNEL_LAYERS passes hosts=[REDIS_URL], so redis-py >= 8 "
           "applies its default socket_timeout of 5 s, which is not longer than channels_redis' "
           "5 s BZPOPMIN (brpop_timeout): every layer.receive() idle for 5 s raises "
           "redis.exceptions.TimeoutError. Idle websocket consumers die with close code 1011 "
           "and the runner's control listener (answers/runner.py Generation._listen) dies 5 s into "
           "an answer, so late viewers get no snapshot and stop relies on the DB poll. Fix: "
           "hosts=[{'address': REDIS_URL, 'socket_timeout': 15}] (or any value > 5).")


# --------------------------------------------------------------------------- the viewer
class Viewer:
    """A websocket client on its own thread: keeps every frame, rebuilds answers like a browser.

    Like the page (static/js/chat.js) it reconnects after an abnormal close; `connections`
    counts the sockets it needed. Tests are synchronous (the ORM, httpx); the socket lives on a
    private event loop.
    """

    def __init__(self, url: str, origin: str, cookie: str) -> None:
        self.url = url
        self.frames: list[Any] = []
        self.connections = 0
        self.drops: list[int | None] = []  # close codes of sockets the server dropped
        self.error: BaseException | None = None
        self.closed = False
        self._changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._ws: ClientConnection | None = None
        self._stopping = False
        self._closing: asyncio.Future[None] | None = None
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(self._run(origin, cookie),),
            name=f"viewer {url}", daemon=True)
        self._thread.start()
        self.wait_for(lambda: self.hello is not None, 10.0, "a hello frame")

    async def _run(self, origin: str, cookie: str) -> None:
        try:
            while not self._stopping:
                self.connections += 1
                try:
                    async with connect(self.url, origin=Origin(origin), proxy=None,
                                       open_timeout=10, close_timeout=3,
                                       additional_headers={"Cookie": cookie}) as ws:
                        self._ws = ws
                        await self._read(ws)
                    return  # a normal close
                except ConnectionClosedError as exc:
                    code = exc.rcvd.code if exc.rcvd else None
                    if self._stopping or code in CLOSE_FOR_GOOD:
                        raise
                    self.drops.append(code)
                await asyncio.sleep(RECONNECT_DELAY)
        except Exception as exc:  # reported by wait_for, with the frames seen so far
            self.error = exc
        finally:
            if self._closing is not None:
                await asyncio.gather(self._closing, return_exceptions=True)
            with self._changed:
                self.closed = True
                self._changed.notify_all()

    async def _read(self, ws: ClientConnection) -> None:
        received = acked = 0
        async for raw in ws:
            text = raw if isinstance(raw, str) else raw.decode()
            received += len(text.encode())
            with self._changed:
                self.frames.append(json.loads(text))
                self._changed.notify_all()
            if received - acked >= ACK_EVERY:  # flow control, as the browser does
                await ws.send(json.dumps({"type": "ack", "bytes": received}))
                acked = received

    def close(self) -> None:
        """Close the socket and wait for the thread: its loop ends when the socket is closed."""
        if not self.closed:
            self._loop.call_soon_threadsafe(self._start_closing)
        self._thread.join(15)  # close_timeout bounds the closing handshake
        if not self._thread.is_alive():
            self._loop.close()

    def vanish(self) -> None:
        """Drop the TCP connection without a closing handshake (a laptop lid, a dead network)."""
        def abort() -> None:
            self._stopping = True
            if self._ws is not None:
                self._ws.transport.abort()

        self._loop.call_soon_threadsafe(abort)
        self._thread.join(15)

    def _start_closing(self) -> None:
        self._stopping = True
        if self._ws is not None and self._closing is None:
            self._closing = asyncio.ensure_future(self._ws.close())

    # --- waiting ----------------------------------------------------------------------------
    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = condition()
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed:
                    raise AssertionError(
                        f"viewer on {self.url}: no {what} within {timeout:.0f} s "
                        f"(closed={self.closed}, error={self.error!r}); "
                        f"last frames: {self.frames[-5:]!r}")
                self._changed.wait(min(remaining, 0.5))

    def wait_final(self, seq: int, timeout: float) -> dict[str, Any]:
        return dict(self.wait_for(lambda: self.final_state(seq), timeout,
                                  f"final state of answer {seq}"))

    def wait_text(self, seq: int, at_least: int, timeout: float) -> str:
        return str(self.wait_for(lambda: len(self.text(seq)) >= at_least and self.text(seq),
                                 timeout, f"{at_least} characters of answer {seq}"))

    # --- what the viewer saw ----------------------------------------------------------------
    @property
    def hello(self) -> dict[str, Any] | None:
        return next((f for f in self.frames if _is(f, "hello")), None)

    def states(self, seq: int) -> list[dict[str, Any]]:
        return [f for f in self.frames if _is(f, "state") and f["seq"] == seq]

    def final_state(self, seq: int) -> dict[str, Any] | None:
        return next((f for f in self.states(seq) if f["status"] in FINAL), None)

    def ended_while_away(self, seq: int) -> bool:
        """A reconnect's hello no longer lists an answer this viewer saw being written."""
        seen = False
        for frame in self.frames:
            if _is(frame, "hello"):
                listed = any(a["seq"] == seq for a in frame["active"])
                if seen and not listed:
                    return True
                seen = seen or listed
            elif (isinstance(frame, list) and frame[1] == seq) or (
                    isinstance(frame, dict) and frame.get("seq") == seq):
                seen = True
        return False

    def deltas(self, seq: int) -> list[list[Any]]:
        return [f for f in self.frames if isinstance(f, list) and f[0] == "d" and f[1] == seq]

    def snapshots(self, seq: int) -> list[dict[str, Any]]:
        return [f for f in self.frames if _is(f, "snapshot") and f["seq"] == seq]

    def text(self, seq: int) -> str:
        return self._rebuild(seq)[0]

    def gaps(self, seq: int) -> int:
        return self._rebuild(seq)[1]

    def _rebuild(self, seq: int) -> tuple[str, int]:
        """Apply frames as docs/protocol.md says; offsets count UTF-16 code units."""
        have = b""  # UTF-16-LE: two bytes per code unit
        gaps = 0
        for frame in list(self.frames):
            if isinstance(frame, list) and frame[0] == "d" and frame[1] == seq:
                offset, piece = frame[2] * 2, frame[3].encode("utf-16-le")
                if offset > len(have):
                    gaps += 1  # a browser would resync; a snapshot fills it in
                elif offset + len(piece) > len(have):
                    have = have[:offset] + piece
                continue
            snapshot = None
            if _is(frame, "snapshot") and frame["seq"] == seq:
                snapshot = frame["text"]
            elif _is(frame, "hello"):
                snapshot = next((a["text"] for a in frame["active"] if a["seq"] == seq), None)
            if snapshot is not None and len(snapshot.encode("utf-16-le")) >= len(have):
                have = snapshot.encode("utf-16-le")
        return have.decode("utf-16-le"), gaps


def _is(frame: Any, kind: str) -> bool:
    return isinstance(frame, dict) and frame.get("type") == kind


# --------------------------------------------------------------------------- the cluster
@dataclass
class Cluster:
    emulator: EmulatorServer
    env: dict[str, str]
    servers: list[ServerProcess]
    worker: WorkerProcess
    retired: list[ServerProcess] = field(default_factory=list)

    def restart(self, index: int, name: str) -> ServerProcess:
        """A new daphne in place of servers[index] (which is dead or stopped)."""
        old = self.servers[index]
        old.stop()
        self.retired.append(old)
        self.servers[index] = ServerProcess(self.env, LOGS / f"daphne-scale-{name}.log")
        return self.servers[index]


@pytest.fixture(scope="module")
def cluster(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Cluster]:
    emulator = EmulatorServer(host="127.0.0.1", port=0, credentials=Credentials())
    emulator.start()
    with django_db_blocker.unblock():
        env = child_env()  # the test database; REDIS_URL comes from this environment
    running: list[Any] = []
    try:
        first = ServerProcess({**env, "GENERATION_STALE_SECONDS": str(STALE_SECONDS)},
                              LOGS / "daphne-scale-1.log")
        running.append(first)
        second = ServerProcess(env, LOGS / "daphne-scale-2.log")
        running.append(second)
        worker = WorkerProcess(env, LOGS / "celery-worker-scale.log", name="scale")
        running.append(worker)
        result = Cluster(emulator, env, [first, second], worker)
        yield result
        running = [*result.servers, worker, *result.retired]
    finally:
        for process in running:
            process.stop()
        emulator.stop()


# --------------------------------------------------------------------------- a signed-in user
@dataclass
class Chat:
    """One signed-in user talking HTTP to any of the processes."""

    user: Any
    session: str
    csrf: str = ""
    viewers: list[Viewer] = field(default_factory=list)

    def http(self, server: ServerProcess) -> httpx.Client:
        cookies = {settings.SESSION_COOKIE_NAME: self.session}
        if self.csrf:
            cookies[settings.CSRF_COOKIE_NAME] = self.csrf
        return httpx.Client(base_url=server.url, cookies=cookies, trust_env=False, timeout=20,
                            headers={"Accept": "application/json", "X-CSRFToken": self.csrf})

    def fetch_csrf(self, server: ServerProcess) -> None:
        with self.http(server) as client:
            response = client.get("/", headers={"Accept": "text/html"})
        assert response.status_code == 200, response.text[:500]
        self.csrf = response.cookies[settings.CSRF_COOKIE_NAME]

    def conversation(self, slug: str) -> Conversation:
        return services.conversation_create(self.user, model=ModelConfig.objects.get(slug=slug))

    def viewer(self, server: ServerProcess, conversation: Conversation) -> Viewer:
        ws_url = server.url.replace("http://", "ws://") + f"/ws/c/{conversation.pk}/"
        viewer = Viewer(ws_url, server.url, f"{settings.SESSION_COOKIE_NAME}={self.session}")
        self.viewers.append(viewer)
        return viewer

    def post(self, server: ServerProcess, conversation: Conversation, text: str,
             attachments: tuple[str, ...] = ()) -> dict[str, Any]:
        data = {"text": text, "client_id": str(uuid.uuid4()), "attachments": list(attachments)}
        with self.http(server) as client:
            response = client.post(f"/c/{conversation.pk}/messages/", data=data)
        assert response.status_code == 201, response.text[:500]
        return dict(response.json()["assistant"])

    def upload(self, server: ServerProcess, png: bytes) -> str:
        with self.http(server) as client:
            response = client.post("/uploads/", files={"image": ("dot.png", png, "image/png")})
        assert response.status_code == 201, response.text[:500]
        return str(response.json()["id"])

    def fragment(self, server: ServerProcess, conversation: Conversation,
                 message_id: str) -> str:
        """The stored answer as the page fetches it after missing its end."""
        with self.http(server) as client:
            response = client.get(f"/c/{conversation.pk}/m/{message_id}/",
                                  headers={"Accept": "text/html"})
        assert response.status_code == 200, response.text[:500]
        return response.text

    def stop(self, server: ServerProcess, conversation: Conversation,
             message_id: str) -> dict[str, Any]:
        with self.http(server) as client:
            response = client.post(f"/c/{conversation.pk}/m/{message_id}/stop/")
        assert response.status_code == 200, response.text[:500]
        return dict(response.json())


@pytest.fixture
def chat(cluster: Cluster, owner: Any) -> Iterator[Chat]:
    for index, server in enumerate(cluster.servers):
        if server.proc.poll() is not None:  # a crash test failed before it restarted it
            cluster.restart(index, f"{index + 1}-replaced-{uuid.uuid4().hex[:6]}")
    cluster.emulator.reset()
    seed_catalogue()  # the transactional flush of the previous test removed the rows
    point_providers_at(cluster.emulator)  # the processes read Provider rows per answer
    client = Client()
    client.force_login(owner)
    user = Chat(owner, client.cookies[settings.SESSION_COOKIE_NAME].value)
    user.fetch_csrf(cluster.servers[1])
    yield user
    for viewer in user.viewers:
        viewer.close()
    settle()


def settle() -> None:
    """Leave no answer running into the next test's database flush."""
    for message in Message.objects.filter(status__in=ACTIVE_STATUSES):
        services.generation_stop(message)
    deadline = time.monotonic() + 5  # runners read the stop flag every second
    while Message.objects.filter(status__in=ACTIVE_STATUSES).exists():
        if time.monotonic() > deadline:
            reaper.reap_stale(now=timezone.now() + timedelta(days=1))
            break
        time.sleep(0.2)


# --------------------------------------------------------------------------- helpers
def tag() -> str:
    """A word that finds this test's requests among the emulator's recordings."""
    return f"tag{uuid.uuid4().hex[:10]}"


def model_calls(emulator: EmulatorServer, marker: str) -> list[RecordedRequest]:
    return [r for r in emulator.requests
            if r.endpoint == "model" and marker in json.dumps(r.json)]


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.1)


def runner_pid(message: Message) -> int:
    """Message.runner is "hostname:pid:random": the process that claimed the answer."""
    return int(message.runner.split(":")[1])


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def u16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 40)).save(buffer, "PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- the tests
def test_a_viewer_on_process_1_watches_a_text_answer_written_by_process_2(
    chat: Chat, cluster: Cluster
) -> None:
    first, second = cluster.servers
    conversation = chat.conversation(TEXT_MODEL)
    marker = tag()
    viewer = chat.viewer(first, conversation)

    answer = chat.post(second, conversation, f"relay {marker} [[emu:tokens n=120 rate=40]]")
    seq = answer["seq"]
    viewer.wait_text(seq, 1, 15)
    # A second viewer joins mid-answer: the hello carries the saved text, and process 2's runner
    # answers the snapshot request that process 1 relays over Redis.
    late = chat.viewer(first, conversation)
    final = viewer.wait_final(seq, 30)
    late_final = late.wait_final(seq, 30)

    message = Message.objects.get(pk=answer["id"])
    assert message.status == MessageStatus.COMPLETE
    assert final["status"] == late_final["status"] == "complete"
    assert message.content and viewer.text(seq) == message.content
    assert final["length"] == u16_len(message.content)
    assert len(viewer.deltas(seq)) > 1  # streamed in pieces, not one blob at the end
    assert viewer.gaps(seq) == 0
    assert late.text(seq) == message.content
    assert [a["seq"] for a in late.hello["active"]] == [seq]  # type: ignore[index]
    assert late.snapshots(seq), "the writing process answered the late viewer's resync"
    # The answer belongs to process 2 alone: it claimed it, and the provider was called once.
    assert runner_pid(message) == second.proc.pid
    assert len(model_calls(cluster.emulator, marker)) == 1


def test_a_viewer_on_process_1_watches_a_vision_answer_written_by_the_worker(
    chat: Chat, cluster: Cluster
) -> None:
    first, second = cluster.servers
    conversation = chat.conversation(VISION_MODEL)
    marker = tag()
    viewer = chat.viewer(first, conversation)

    image = chat.upload(second, small_png())
    answer = chat.post(second, conversation, f"what is in {marker}? [[emu:tokens n=60 rate=60]]",
                       attachments=(image,))
    seq = answer["seq"]
    final = viewer.wait_final(seq, 45)

    message = Message.objects.get(pk=answer["id"])
    assert final["status"] == message.status == MessageStatus.COMPLETE, message.error_message
    assert message.content and viewer.text(seq) == message.content
    assert viewer.gaps(seq) == 0
    pid = runner_pid(message)
    assert pid not in {first.proc.pid, second.proc.pid}
    assert "celery" in command_line(pid) and "worker" in command_line(pid)
    answered = [r for r in model_calls(cluster.emulator, marker) if r.status == 200]
    assert len(answered) == 1
    assert "image" in answered[0].json  # Cloudflare takes the image as a byte array


def test_viewers_that_vanish_mid_answer_leave_no_errors_and_the_others_see_it_all(
    chat: Chat, cluster: Cluster
) -> None:
    first, second = cluster.servers
    conversation = chat.conversation(TEXT_MODEL)
    log_before = len(first.log_text())
    stayer = chat.viewer(first, conversation)
    leavers = [chat.viewer(first, conversation) for _ in range(16)]
    answer = chat.post(second, conversation, f"leave {tag()} [[emu:tokens n=2000 rate=1000]]")
    seq = answer["seq"]
    for viewer in leavers:
        viewer.wait_text(seq, 1, 15)
    for index, viewer in enumerate(leavers):  # half hang up politely, half just vanish
        if index % 2:
            viewer.vanish()
        else:
            viewer.close()
    final = stayer.wait_final(seq, 30)
    message = Message.objects.get(pk=answer["id"])
    assert final["status"] == "complete" and stayer.text(seq) == message.content
    time.sleep(0.5)  # let process 1 handle the disconnects
    log = first.log_text()[log_before:]
    assert "Exception inside application" not in log, log[-3000:]


def test_stop_pressed_on_process_1_stops_the_answer_process_2_writes(
    chat: Chat, cluster: Cluster
) -> None:
    first, second = cluster.servers
    conversation = chat.conversation(TEXT_MODEL)
    marker = tag()
    viewer = chat.viewer(first, conversation)

    answer = chat.post(second, conversation, f"stop me {marker} {SLOW}")
    seq = answer["seq"]
    viewer.wait_text(seq, 20, 15)
    assert chat.stop(first, conversation, answer["id"]) == {"stopping": True}
    final = viewer.wait_final(seq, 10)  # the whole answer would take 15 s

    message = Message.objects.get(pk=answer["id"])
    assert final["status"] == message.status == MessageStatus.STOPPED
    assert message.finish_reason == final["finish_reason"] == "stopped"
    assert message.content and viewer.text(seq) == message.content
    # The upstream request was cancelled: the emulator saw the client leave, far short of the
    # full answer, after sending at least what was kept.
    (request,) = wait_until(
        lambda: [r for r in model_calls(cluster.emulator, marker) if r.outcome != "pending"],
        5, "end of the upstream request")
    assert request.outcome == "client-closed"
    assert request.sent_text.startswith(message.content)
    assert len(tokenize(request.sent_text)) < SLOW_TOKENS // 2


@IDLE_LAYER_BUG
def test_the_channel_layer_waits_more_than_five_idle_seconds_for_a_message() -> None:
    """What every consumer and runner does between events, with the configured layer."""
    from django.utils.module_loading import import_string

    config = settings.CHANNEL_LAYERS["default"]

    async def scenario() -> dict[str, Any]:
        layer = import_string(config["BACKEND"])(**config["CONFIG"])
        channel = await layer.new_channel("idle.")

        async def send_later() -> None:
            await asyncio.sleep(IDLE_SECONDS)  # a reader pausing between prompts
            await layer.send(channel, {"type": "late"})

        sender = asyncio.create_task(send_later())
        try:
            return dict(await asyncio.wait_for(layer.receive(channel), IDLE_SECONDS + 10))
        finally:
            sender.cancel()
            await (layer.close_pools() if hasattr(layer, "close_pools") else layer.flush())

    assert asyncio.run(scenario()) == {"type": "late"}


@IDLE_LAYER_BUG
def test_a_viewer_joining_process_1_late_in_a_long_answer_catches_up_from_process_2(
    chat: Chat, cluster: Cluster
) -> None:
    first, second = cluster.servers
    conversation = chat.conversation(TEXT_MODEL)
    early = chat.viewer(first, conversation)
    answer = chat.post(second, conversation, f"long {tag()} {SLOW}")
    seq = answer["seq"]
    # Nobody asked the runner anything for IDLE_SECONDS of streaming (20 tokens a second).
    early.wait_for(lambda: len(tokenize(early.text(seq))) >= IDLE_SECONDS * 20, 20,
                   f"{IDLE_SECONDS} s of answer")

    late = chat.viewer(first, conversation)
    assert [a["seq"] for a in late.hello["active"]] == [seq]  # type: ignore[index]
    late.wait_for(lambda: late.snapshots(seq), 5, "a snapshot from the writing process")
    chat.stop(first, conversation, answer["id"])
    early.wait_final(seq, 10)
    late.wait_final(seq, 10)
    message = Message.objects.get(pk=answer["id"])
    assert message.status == MessageStatus.STOPPED
    assert late.text(seq) == early.text(seq) == message.content


@pytest.mark.parametrize("how", [signal.SIGKILL], ids=["crash"])
def test_a_dead_process_2_leaves_its_answer_interrupted_with_its_text_and_process_1_says_so(
    chat: Chat, cluster: Cluster, how: signal.Signals
) -> None:
    """SIGKILL is a crash: the reaper tells the story. (SIGTERM, what `systemctl restart`
    sends, drains instead: tests/scale/test_drain_scale.py.)"""
    first, second = cluster.servers
    conversation = chat.conversation(TEXT_MODEL)
    marker = tag()
    viewer = chat.viewer(first, conversation)

    answer = chat.post(second, conversation, f"crash {marker} {SLOW}")
    seq = answer["seq"]
    # Wait for at least one save of the partial text (about once a second), then crash.
    saved = wait_until(lambda: Message.objects.get(pk=answer["id"]).content, 10,
                       "partial text saved")
    viewer.wait_text(seq, len(saved), 10)
    second.proc.send_signal(how)
    second.proc.wait(10)

    viewer.wait_for(lambda: viewer.final_state(seq) or viewer.ended_while_away(seq),
                    STALE_SECONDS + REAPER_INTERVAL + 15, f"the end of answer {seq}")

    message = Message.objects.get(pk=answer["id"])
    assert message.status == MessageStatus.INTERRUPTED and message.error_code == "interrupted"
    final = viewer.final_state(seq)
    if final is None:
        # Only a viewer whose socket was dropped (IDLE_LAYER_BUG) may miss the state frame; it
        # then learns the end as the page does, from the stored answer.
        assert viewer.drops, "a viewer that stayed connected gets the final state"
        fragment = chat.fragment(first, conversation, answer["id"])
        assert 'data-status="interrupted"' in fragment
    else:
        assert (final["status"], final["error_code"]) == ("interrupted", "interrupted")
    assert message.content, "the text saved before the crash is kept"
    assert viewer.text(seq).startswith(message.content)  # at most a second behind the viewer
    assert not Message.objects.filter(status__in=ACTIVE_STATUSES).exists()
    usage = UsageRecord.objects.get(message=message)
    assert usage.finished_at is not None and usage.status == MessageStatus.INTERRUPTED

    # A restarted process 2 takes the next prompt of the same conversation.
    restarted = cluster.restart(1, f"2-after-{how.name}")
    watcher = chat.viewer(first, conversation)
    follow_up = chat.post(restarted, conversation, f"again {marker} [[emu:tokens n=30 rate=60]]")
    again = watcher.wait_final(follow_up["seq"], 30)
    message = Message.objects.get(pk=follow_up["id"])
    assert again["status"] == message.status == MessageStatus.COMPLETE
    assert message.content and watcher.text(follow_up["seq"]) == message.content
    assert runner_pid(message) == restarted.proc.pid
