"""Memory benchmark (issue 7): RSS per socket and stream; RSS and Redis after cancellations.

RSS slope per idle websocket and per active stream, and whether RSS and Redis come back to
their baseline after 500 cancelled streams.

Against the app's daphne process (VmRSS from /proc/<pid>/status), in embedded mode (SQLite,
in-memory channel layer) and, unless --no-redis, again with REDIS_URL on Redis DB 13
(channels_redis; text answers still run in daphne, so no Celery worker is started):

1. idle: open N conversation sockets /ws/c/<id>/ (one signed-in user each, like browser tabs)
   in steps; least-squares RSS slope per socket;
2. active: N concurrent slow answers on those sockets in steps; slope per active stream;
3. cancelled: 500 streams, half stopped with POST /c/<id>/m/<mid>/stop/, half abandoned (the
   client closes its websocket mid-stream; docs/protocol.md: the answer then finishes on its
   own); RSS (and Redis keys and their memory) against the baseline taken after a warm-up
   batch of cancelled streams.

    .venv/bin/python bench/memory.py              # idle 100..400, active 50..200, 500 cancelled
    .venv/bin/python bench/memory.py --quick      # small N, under two minutes
    .venv/bin/python bench/memory.py --no-redis   # embedded mode only

Method and metrics: bench/README.md. Targets: docs/performance.md of the shared docs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/memory.py` from the repository root
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis as redis_lib  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidHandshake  # noqa: E402

from bench.relay import (  # noqa: E402
    RESULTS,
    AppClient,
    Config,
    Slot,
    Stack,
    cpu_seconds,
    parse_args,
)

REDIS_URL = "redis://127.0.0.1:6379/13"  # DB 13 belongs to this benchmark: flushed at start
IDLE_TARGET_KIB = 64.0
ACTIVE_TARGET_KIB = 256.0
RETURN_TOLERANCE = 0.05  # "back to baseline +/- 5 %"
# ... of a Redis baseline that can be near zero (the pub/sub layer keeps no keys): at least
# this much slack, so one cache entry more is not a failure.
REDIS_SLACK = {"persistent_keys": 5, "key_bytes": 64 * 1024, "subscriptions": 5}
RETURN_WAIT_S = 30.0  # channels_redis expires messages after 30 s (settings: "expiry": 30)
ACTIVE = ("queued", "streaming")
Log = Callable[[str], None]

# One empty conversation per user, made in a separate process before any socket opens: the
# app process then has not handled hundreds of requests whose freed memory (pymalloc pools,
# malloc arenas) would absorb the sockets' allocations and hide them from RSS.
CONVERSATIONS_CODE = """
import json, os
from django.contrib.auth import get_user_model
from django.conf import settings
from conversations.chat import services
from providers.models import ModelConfig
model = ModelConfig.objects.get(slug=os.environ["BENCH_MODEL"])
users = get_user_model().objects
ids = [str(services.conversation_create(users.get(username=f"bench-{index}"), model=model).pk)
       for index in range(int(os.environ["BENCH_USERS"]))]
layer = settings.CHANNEL_LAYERS["default"]["BACKEND"]
with open(os.environ["BENCH_CONVERSATIONS"], "w") as out:
    json.dump({"ids": ids, "channel_layer": layer}, out)
"""


@dataclass(frozen=True)
class Plan:
    warm_sockets: int  # open before the idle baseline, so first-use costs are not counted
    idle_steps: tuple[int, ...]
    active_steps: tuple[int, ...]
    cancel_slots: int  # conversations the cancelled phase cycles through (= its batch size)
    cancel_warmup: int
    cancel_total: int
    # At 5 tokens/s, 200 streams are ~1,000 tokens/s: about a third of the app's core, so the
    # reading is per-stream state, not a backlog of frames queued behind a saturated core.
    active_magic: str = "[[emu:tokens n=2000 rate=5 ttft=0]]"
    stop_magic: str = "[[emu:tokens n=2000 rate=20 ttft=0]]"
    # Abandoned answers keep running (closing a tab does not stop them): keep them short.
    close_magic: str = "[[emu:tokens n=100 rate=20 ttft=0]]"
    hold_s: tuple[float, float] = (0.3, 1.5)  # after the first delta, before stop/close
    warm_magic: str = "[[emu:tokens n=12 ttft=0]]"  # one answer per warm-up socket
    settle_max_s: float = 20.0
    # After the app is quiet, before reading: past DEFLATE_IDLE_SECONDS (chatsite/
    # daphne_tuning.py, 10 s), when a quiet socket has given its compressor back, so the figure
    # is a tab left open, not one just opened (that one holds ~40 KiB more while compressing).
    idle_wait_s: float = 12.0
    active_wait_s: float = 2.0  # after every stream of a step has delivered text

    @property
    def users(self) -> int:
        return self.warm_sockets + max(*self.idle_steps, *self.active_steps, self.cancel_slots)


FULL = Plan(warm_sockets=10, idle_steps=(100, 200, 300, 400), active_steps=(50, 100, 200),
            cancel_slots=100, cancel_warmup=50, cancel_total=500)
QUICK = Plan(warm_sockets=4, idle_steps=(10, 20), active_steps=(5, 10), cancel_slots=10,
             cancel_warmup=10, cancel_total=20, close_magic="[[emu:tokens n=40 rate=20 ttft=0]]",
             hold_s=(0.2, 0.8), settle_max_s=4.0, active_wait_s=1.0)


class MemoryStack(Stack):
    """relay.Stack (emulator + one daphne app on SQLite), optionally in Redis mode."""

    def __init__(self, cfg: Config, redis_url: str | None = None) -> None:
        super().__init__(cfg)
        self.redis_url = redis_url

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        return env


# --- readings -----------------------------------------------------------------------------------
def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (the metric), RssAnon (heap only, no file-backed pages) and VmHWM (peak)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "VmHWM"):
                out[name] = int(value.split()[0])
    return out


async def sample_memory(pid: int, reads: int = 3, gap: float = 0.2) -> dict[str, int]:
    """Median of a few reads: one read can land mid-allocation."""
    samples = []
    for index in range(reads):
        if index:
            await asyncio.sleep(gap)
        samples.append(memory_kib(pid))
    return {key: sorted(s.get(key, 0) for s in samples)[reads // 2] for key in samples[0]}


async def settle(pid: int, max_wait: float, window: float = 0.5) -> float:
    """Wait until the app has used at most one clock tick of CPU in two windows in a row (it
    has finished what it was doing), at most `max_wait` s; returns the time waited."""
    t0 = time.monotonic()
    quiet = 0
    while quiet < 2 and time.monotonic() - t0 < max_wait:
        before = cpu_seconds(pid)
        await asyncio.sleep(window)
        quiet = quiet + 1 if cpu_seconds(pid) - before <= 0.011 else 0
    return round(time.monotonic() - t0, 2)


def redis_stats(client: redis_lib.Redis | None) -> dict[str, Any] | None:
    """Keys of our DB, their total MEMORY USAGE, keys without a TTL (they never go away by
    themselves), keys by pattern; channels_redis state: group memberships (core layer: ZCARD
    of asgi:group:*) and the app's pub/sub subscriptions and connections (pub/sub layer:
    CLIENT LIST entries on DB 13 other than ours). used_memory is the whole server's (other
    DBs too), so it is reported, not judged."""
    if client is None:
        return None
    keys = list(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key)
        pipe.ttl(key)
    replies = pipe.execute() if keys else []
    sizes, ttls = replies[0::2], replies[1::2]
    patterns: dict[str, int] = {}
    for key in keys:
        name = re.sub(r"[0-9a-f]{12,}|[A-Za-z0-9]{12}(?=$|!)|\d+", "*",
                      key.decode(errors="replace"))
        patterns[name] = patterns.get(name, 0) + 1
    groups = [key for key in keys if key.startswith(b"asgi:group:")]
    for key in groups:
        pipe.zcard(key)
    members = sum(pipe.execute()) if groups else 0
    me = client.client_id()
    app = [c for c in client.client_list() if c.get("db") == "13" and c.get("id") != str(me)]
    info = client.info("memory")
    return {"keys": len(keys), "key_bytes": sum(size or 0 for size in sizes),
            "persistent_keys": sum(1 for ttl in ttls if ttl == -1),
            "max_ttl_s": max((ttl for ttl in ttls if ttl > 0), default=None),
            "group_members": members, "connections": len(app),
            "subscriptions": sum(int(c.get("sub", 0)) + int(c.get("psub", 0)) for c in app),
            "dbsize": int(client.dbsize()), "used_memory": int(info["used_memory"]),
            "patterns": dict(sorted(patterns.items()))}


def answer_statuses(db_path: Path) -> dict[str, int]:
    """Assistant messages by status, read from the app's SQLite file (read-only)."""
    uri = f"file:{db_path}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
        rows = db.execute("SELECT status, count(*) FROM conversations_message "
                          "WHERE role = 'assistant' GROUP BY status").fetchall()
    return {str(status): int(count) for status, count in rows}


async def wait_no_active(db_path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = await asyncio.to_thread(answer_statuses, db_path)
        if not any(counts.get(status) for status in ACTIVE):
            return True
        await asyncio.sleep(0.5)
    return False


def fit(points: Sequence[tuple[float, float]]) -> dict[str, float | None]:
    """Least-squares line through (x, y): slope, intercept, r^2."""
    n = len(points)
    if n < 2:
        return {"slope": None, "intercept": None, "r2": None}
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    syy = sum((y - my) ** 2 for _, y in points)
    slope = sxy / sxx if sxx else 0.0
    r2 = (sxy * sxy / (sxx * syy)) if sxx and syy else 1.0
    return {"slope": round(slope, 2), "intercept": round(my - slope * mx, 1), "r2": round(r2, 4)}


# --- the client side ----------------------------------------------------------------------------
class StreamError(Exception):
    pass


class Session:
    """The signed-in users, their conversations and open sockets in one stack."""

    def __init__(self, stack: MemoryStack, cfg: Config, plan: Plan, log: Log,
                 redis_client: redis_lib.Redis | None) -> None:
        self.stack = stack
        self.cfg = cfg
        self.plan = plan
        self.log = log
        self.redis = redis_client
        self.pid = stack.pid("app")
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        self.transport = httpx.AsyncHTTPTransport(limits=limits)
        self.apps = [AppClient(stack.app_url, self.transport, key) for key in stack.sessions]
        self.conversations: list[str] = []
        self.channel_layer = ""
        self.slots: dict[int, Slot] = {}  # user index -> open socket
        self.gate = asyncio.Semaphore(16)  # POSTs and handshakes in flight
        self.rng = random.Random(7)
        self.errors: dict[str, int] = {}

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    async def snapshot(self) -> dict[str, Any]:
        return {"t": round(time.monotonic(), 2), "mem_kib": await sample_memory(self.pid),
                "redis": await asyncio.to_thread(redis_stats, self.redis)}

    async def quiet(self) -> float:
        return await settle(self.pid, self.plan.settle_max_s)

    # --- conversations and sockets ----------------------------------------------------------
    async def prepare(self) -> None:
        """One empty conversation per user (CONVERSATIONS_CODE); no socket yet."""
        path = self.cfg.var_dir / "conversations.json"
        env = {**self.stack.env(), "BENCH_USERS": str(len(self.apps)),
               "BENCH_MODEL": self.cfg.model, "BENCH_CONVERSATIONS": str(path)}
        with self.stack.logs["setup"].open("ab") as log:
            done = await asyncio.to_thread(
                subprocess.run, [sys.executable, "manage.py", "shell", "-c", CONVERSATIONS_CODE],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=600,
                check=False)
        if done.returncode != 0:
            raise RuntimeError(f"creating conversations failed; see {self.stack.logs['setup']}")
        made = json.loads(path.read_text())
        path.unlink()
        self.conversations = made["ids"]
        self.channel_layer = str(made["channel_layer"])

    async def warm_up(self, run_id: str) -> None:
        """Sockets of the first users, each with one short answer: first-use costs (imports,
        the provider client, caches) land before any baseline."""
        users = range(self.plan.warm_sockets)
        await self.open_sockets(users)

        async def one(index: int) -> None:
            seq, _message_id = await self.start_stream(index, f"bench-mem-{run_id}-w{index}",
                                                       self.plan.warm_magic)
            self.slots[index].end()
            await asyncio.wait_for(self.slots[index].wait_terminal({seq}), 60)

        await asyncio.gather(*(one(i) for i in users))

    async def open_socket(self, index: int) -> Slot:
        async with self.gate:
            slot = await Slot.open(self.apps[index], self.conversations[index],
                                   compression=self.cfg.ws_compression)
        await asyncio.wait_for(slot.hello.wait(), 60)
        if slot.closed:
            raise RuntimeError(f"socket of user {index} closed during the handshake")
        if slot.active:  # an abandoned answer still running: let it end first
            await asyncio.wait_for(slot.wait_terminal(slot.active), 60)
        self.slots[index] = slot
        return slot

    async def open_sockets(self, indexes: Sequence[int]) -> None:
        await asyncio.gather(*(self.open_socket(i) for i in indexes))

    async def close_all(self) -> None:
        await asyncio.gather(*(slot.close() for slot in self.slots.values()),
                             return_exceptions=True)
        self.slots.clear()
        await self.transport.aclose()

    # --- streams ------------------------------------------------------------------------------
    async def start_stream(self, index: int, tag: str, magic: str) -> tuple[int, str]:
        slot = self.slots[index]
        slot.begin()  # record frames until the first delta arrives
        async with self.gate:
            response = await slot.app.post_message(slot.conversation, self.cfg.prompt(tag, magic))
        if response.status_code not in (200, 201):
            slot.end()
            raise StreamError(f"post_{response.status_code}")
        assistant = response.json()["assistant"]
        return int(assistant["seq"]), str(assistant["id"])

    async def first_delta(self, index: int, seq: int, timeout: float = 60.0) -> None:
        slot = self.slots[index]
        seen = 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    frames = slot.log
                    if any(isinstance(f, list) and f[:2] == ["d", seq] for _t, _w, _s, f in
                           frames[seen:]):
                        return
                    seen = len(frames)
                    if seq in slot.terminal or slot.closed:
                        raise StreamError(f"ended_before_delta_{slot.terminal.get(seq)}")
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise StreamError("no_first_delta") from None
        finally:
            slot.end()

    async def stop(self, index: int, message_id: str, seq: int) -> str:
        slot = self.slots[index]
        app = slot.app
        headers = {"Cookie": app.cookie, "X-CSRFToken": app.csrf, "Accept": "application/json"}
        async with self.gate:
            response = await app.http.post(f"/c/{slot.conversation}/m/{message_id}/stop/",
                                           headers=headers)
        if response.status_code != 200:
            raise StreamError(f"stop_{response.status_code}")
        try:
            await asyncio.wait_for(slot.wait_terminal({seq}), 60)
        except TimeoutError:
            raise StreamError("stop_no_final_state") from None
        return slot.terminal[seq]

    async def cancelled_stream(self, index: int, kind: str, tag: str) -> str:
        """One stream stopped (kind "stop") or abandoned mid-stream (kind "close")."""
        magic = self.plan.stop_magic if kind == "stop" else self.plan.close_magic
        try:
            seq, message_id = await self.start_stream(index, tag, magic)
            await self.first_delta(index, seq)
            await asyncio.sleep(self.rng.uniform(*self.plan.hold_s))
            if kind == "stop":
                return await self.stop(index, message_id, seq)
            await self.slots.pop(index).close()
            return "closed"
        except (StreamError, httpx.HTTPError, ConnectionError) as exc:
            name = str(exc) if isinstance(exc, StreamError) else type(exc).__name__
            self.error(name)
            return f"error:{name}"


# --- phases -------------------------------------------------------------------------------------
async def idle_phase(s: Session, run_id: str) -> dict[str, Any]:
    plan = s.plan
    await s.warm_up(run_id)
    settled = await s.quiet()
    base = await s.snapshot()
    s.log(f"idle: baseline {base['mem_kib']['VmRSS']} KiB with {plan.warm_sockets} warm-up "
          f"sockets (settled {settled}s)")
    points = [{"sockets": 0, "settle_s": settled, **base}]
    opened = 0
    for step in plan.idle_steps:
        await s.open_sockets(range(plan.warm_sockets + opened, plan.warm_sockets + step))
        opened = step
        settled = await s.quiet()
        await asyncio.sleep(plan.idle_wait_s)
        snap = await s.snapshot()
        points.append({"sockets": step, "settle_s": settled, **snap})
        s.log(f"idle: {step} sockets: {snap['mem_kib']['VmRSS']} KiB")
    return {"points": points, **_slopes(points, "sockets")}


def _slopes(points: list[dict[str, Any]], x: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rss_kib": fit([(p[x], p["mem_kib"]["VmRSS"]) for p in points]),
        "anon_kib": fit([(p[x], p["mem_kib"].get("RssAnon", 0)) for p in points]),
    }
    if points[0]["redis"] is not None:
        for name in ("keys", "key_bytes", "subscriptions"):
            out[f"redis_{name}"] = fit([(p[x], p["redis"][name]) for p in points])
    return out


async def active_phase(s: Session, run_id: str) -> dict[str, Any]:
    plan = s.plan
    users = [plan.warm_sockets + i for i in range(max(plan.active_steps))]
    await s.quiet()
    base = await s.snapshot()
    points = [{"streams": 0, "streams_ok": 0, **base}]
    running: dict[int, tuple[int, str]] = {}  # user index -> (seq, message id)
    started = 0
    t0 = time.monotonic()

    async def begin(index: int) -> None:
        try:
            seq, message_id = await s.start_stream(index, f"bench-mem-{run_id}-a{index}",
                                                   plan.active_magic)
            running[index] = (seq, message_id)
            await s.first_delta(index, seq)
        except (StreamError, httpx.HTTPError) as exc:
            s.error(str(exc) if isinstance(exc, StreamError) else type(exc).__name__)

    for step in plan.active_steps:
        await asyncio.gather(*(begin(i) for i in users[started:step]))
        started = step
        await asyncio.sleep(plan.active_wait_s)  # all of the step's streams are flowing
        snap = await s.snapshot()
        points.append({"streams": step, "streams_ok": len(running),
                       "age_s": round(time.monotonic() - t0, 1), **snap})
        s.log(f"active: {step} streams ({len(running)} started): "
              f"{snap['mem_kib']['VmRSS']} KiB")
    statuses = await asyncio.gather(*(s.stop(i, mid, seq) for i, (seq, mid)
                                      in running.items()), return_exceptions=True)
    stopped = sum(1 for status in statuses if status == "stopped")
    s.log(f"active: stopped {stopped}/{len(running)}")
    return {"points": points, "stopped": stopped, **_slopes(points, "streams")}


async def cancelled_phase(s: Session, run_id: str) -> dict[str, Any]:
    plan = s.plan
    users = [plan.warm_sockets + i for i in range(plan.cancel_slots)]
    await s.open_sockets([i for i in users if i not in s.slots])  # (plans with few idle ones)
    await wait_no_active(s.stack.db_path, 60)
    await s.quiet()
    raw = await s.snapshot()
    counts: dict[str, int] = {}
    trail: list[dict[str, Any]] = []

    async def batches(total: int, label: str) -> None:
        done = 0
        while done < total:
            size = min(plan.cancel_slots, total - done)
            jobs = [s.cancelled_stream(users[i], "stop" if (done + i) % 2 == 0 else "close",
                                       f"bench-mem-{run_id}-{label}{done + i}")
                    for i in range(size)]
            for outcome in await asyncio.gather(*jobs):
                key = f"{label}:{outcome}"
                counts[key] = counts.get(key, 0) + 1
            # Tabs come back (like a reload): same sockets open as at the baseline; this also
            # waits for the abandoned answers to finish.
            await s.open_sockets([i for i in users if i not in s.slots])
            done += size
            mem = memory_kib(s.pid)  # unsettled: the growth curve, not a measurement
            trail.append({"label": label, "done": done, "VmRSS": mem.get("VmRSS"),
                          "RssAnon": mem.get("RssAnon")})
            s.log(f"cancelled ({label}): {done}/{total}, {mem.get('VmRSS')} KiB")

    await batches(plan.cancel_warmup, "warmup")
    await wait_no_active(s.stack.db_path, 60)
    await s.quiet()
    base = await s.snapshot()
    await batches(plan.cancel_total, "run")
    t_end = time.monotonic()
    all_ended = await wait_no_active(s.stack.db_path, 60)
    settled = await s.quiet()
    polls, returned = await _poll_return(s, base, t_end)
    after = polls[-1]
    return {"raw_baseline": raw, "baseline": base, "after": after, "polls": polls,
            "returned_after_s": returned, "settle_s": settled, "answers_ended": all_ended,
            "outcomes": counts, "batches": trail, "streams": plan.cancel_total,
            "warmup": plan.cancel_warmup,
            "statuses": await asyncio.to_thread(answer_statuses, s.stack.db_path)}


def _within(value: float, base: float, slack: float = 0.0) -> bool:
    return abs(value - base) <= max(RETURN_TOLERANCE * base, slack)


def _returned(snap: dict[str, Any], base: dict[str, Any]) -> dict[str, bool]:
    out = {"rss": _within(snap["mem_kib"]["VmRSS"], base["mem_kib"]["VmRSS"])}
    if base["redis"] is not None:
        for name, slack in REDIS_SLACK.items():
            out[f"redis_{name}"] = _within(snap["redis"][name], base["redis"][name], slack)
    return out


async def _poll_return(s: Session, base: dict[str, Any],
                       t_end: float) -> tuple[list[dict[str, Any]], dict[str, float | None]]:
    """Read every second until RSS and Redis are back within +/-5 % of the baseline (each
    metric's time from the end of the last batch), or RETURN_WAIT_S has passed."""
    polls: list[dict[str, Any]] = []
    returned: dict[str, float | None] = {}
    deadline = time.monotonic() + RETURN_WAIT_S
    while True:
        snap = await s.snapshot()
        polls.append(snap)
        for name, ok in _returned(snap, base).items():
            if ok and returned.get(name) is None:
                returned[name] = round(time.monotonic() - t_end, 1)
            elif not ok:
                returned[name] = None  # must stay back, not just touch the band once
        if all(v is not None for v in returned.values()) or time.monotonic() > deadline:
            return polls, returned
        await asyncio.sleep(1.0)


# --- one stack ----------------------------------------------------------------------------------
async def measure(stack: MemoryStack, cfg: Config, plan: Plan, log: Log,
                  redis_client: redis_lib.Redis | None) -> dict[str, Any]:
    s = Session(stack, cfg, plan, log, redis_client)
    run_id = f"{random.randrange(16**6):06x}"
    out: dict[str, Any] = {}
    try:
        out["after_start"] = await s.snapshot()
        await s.prepare()
        out["channel_layer"] = s.channel_layer
        log(f"prepared {len(s.conversations)} conversations; layer {s.channel_layer}")
        out["idle"] = await idle_phase(s, run_id)
        out["active"] = await active_phase(s, run_id)
        out["cancelled"] = await cancelled_phase(s, run_id)
    finally:
        await s.close_all()
    out["client_errors"] = s.errors
    return out


def stack_config(users: int, var_dir: Path, quick: bool,
                 ws_compression: str = "deflate") -> Config:
    """relay's Config for `users` signed-in users on relay's embedded stack (SQLite, no
    worker, no PostgreSQL); Redis mode is added by MemoryStack.env, on our own DB."""
    cfg = parse_args(["--k", str(users), "--var-dir", str(var_dir), "--arms", "A0,A1",
                      "--stack", "embedded", "--ws-compression", ws_compression,
                      *(["--quick"] if quick else [])])
    # Never let relay's Redis stack start here: it would FLUSHDB relay's Redis database and
    # drop its PostgreSQL database.
    if getattr(cfg, "redis", False) or getattr(cfg, "worker_concurrency", 0):
        raise RuntimeError("bench.relay.parse_args did not give an embedded stack")
    return cfg


def run_mode(mode: str, plan: Plan, quick: bool, stamp: str, log: Log,
             redis_url: str = REDIS_URL, ws_compression: str = "deflate") -> dict[str, Any]:
    var_dir = RESULTS / ("var-memory-redis" if mode == "redis" else "var-memory")
    cfg = stack_config(plan.users, var_dir, quick, ws_compression)
    client: redis_lib.Redis | None = None
    if mode == "redis":
        client = redis_lib.Redis.from_url(redis_url)
        client.flushdb()  # DB 13 is this benchmark's
    stack = MemoryStack(cfg, redis_url if mode == "redis" else None)
    affinity = os.sched_getaffinity(0)  # Stack.start pins this process to core 1
    log(f"[{mode}] starting emulator :{stack.emu_port} and app :{stack.app_port} "
        f"({plan.users} users, var dir {var_dir})")
    t0 = time.monotonic()
    try:
        stack.start()
        result = asyncio.run(measure(stack, cfg, plan, lambda m: log(f"[{mode}] {m}"), client))
    except (RuntimeError, OSError, TimeoutError, httpx.HTTPError, InvalidHandshake,
            ConnectionClosed, redis_lib.RedisError) as exc:
        stack.stop()
        raise RuntimeError(f"{mode}: {type(exc).__name__}: {exc}\n{stack.log_tail()}") from exc
    finally:
        stack.stop()
        os.sched_setaffinity(0, affinity)  # or the next Stack finds one core and cannot pin
        if client is not None:
            with contextlib.suppress(redis_lib.RedisError):
                client.flushdb()
            client.close()
    result.update(mode=mode, pinned=stack.pinned, redis_url=stack.redis_url,
                  wall_s=round(time.monotonic() - t0, 1),
                  app_log=stack.app_log_summary())
    result["targets"] = targets(result)
    result["cancelled"]["verdict"] = verdict(result)
    return result


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """The cancelled-streams check in one line (bench/run.py's summary reads it)."""
    c = result["cancelled"]
    base, after = c["baseline"]["mem_kib"]["VmRSS"], c["after"]["mem_kib"]["VmRSS"]
    checks = {name: ok for name, ok in result["targets"].items() if "back" in name}
    summary = f"RSS {_pct(after, base)}"
    if c["baseline"]["redis"] is not None:
        rb, ra = c["baseline"]["redis"], c["after"]["redis"]
        summary += (f"; Redis keys {rb['keys']}->{ra['keys']}, subscriptions "
                    f"{rb['subscriptions']}->{ra['subscriptions']}")
    return {"pass": all(checks.values()), "summary": summary, "checks": checks}


# --- report -------------------------------------------------------------------------------------
def targets(result: dict[str, Any]) -> dict[str, bool | None]:
    idle = result["idle"]["rss_kib"]["slope"]
    active = result["active"]["rss_kib"]["slope"]
    cancelled = result["cancelled"]
    back = _returned(cancelled["after"], cancelled["baseline"])
    out: dict[str, bool | None] = {
        "idle_le_64kib": None if idle is None else idle <= IDLE_TARGET_KIB,
        "active_le_256kib": None if active is None else active <= ACTIVE_TARGET_KIB,
        "rss_back_within_5pct": back["rss"],
    }
    for name in REDIS_SLACK:
        if f"redis_{name}" in back:
            out[f"redis_{name}_back_within_5pct"] = back[f"redis_{name}"]
    return out


def _pct(value: float, base: float) -> str:
    return f"{100 * (value - base) / base:+.1f} %" if base else "-"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("pass" if ok else "FAIL")


def _rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    idle, active, c = r["idle"], r["active"], r["cancelled"]
    t = r["targets"]
    steps_i = ",".join(str(p["sockets"]) for p in idle["points"][1:])
    steps_a = ",".join(str(p["streams"]) for p in active["points"][1:])
    base, raw, after = (c[k]["mem_kib"]["VmRSS"] for k in ("baseline", "raw_baseline", "after"))
    n = c["streams"]
    rows = [
        (f"RSS per idle websocket (N=0,{steps_i})",
         f"{idle['rss_kib']['slope']} KiB (r2 {idle['rss_kib']['r2']})", "<= 64 KiB",
         _verdict(t["idle_le_64kib"])),
        (f"RSS per active stream (N=0,{steps_a})",
         f"{active['rss_kib']['slope']} KiB (r2 {active['rss_kib']['r2']})", "<= 256 KiB",
         _verdict(t["active_le_256kib"])),
        (f"RSS after {n} cancelled vs warm baseline",
         f"{base}->{after} KiB ({_pct(after, base)})", "+/-5 %",
         _verdict(t["rss_back_within_5pct"])),
        ("  same, per cancelled stream", f"{(after - base) / n:+.1f} KiB", "(info)", "-"),
        (f"RSS after {n} cancelled vs raw baseline",
         f"{raw}->{after} KiB ({_pct(after, raw)})", "(info)", "-"),
    ]
    if c["baseline"]["redis"] is not None:
        rb, ra = c["baseline"]["redis"], c["after"]["redis"]
        back = c["returned_after_s"]
        rows += [
            ("Redis per idle websocket",
             f"{idle['redis_keys']['slope']} keys, {idle['redis_key_bytes']['slope']:.0f} B, "
             f"{idle['redis_subscriptions']['slope']} subs", "(info)", "-"),
            (f"Redis keys (no TTL) after {n} cancelled",
             f"{rb['keys']}->{ra['keys']} ({rb['persistent_keys']}->{ra['persistent_keys']})",
             "+/-5 % (>=5)", _verdict(t["redis_persistent_keys_back_within_5pct"])),
            ("Redis key memory after cancelled",
             f"{rb['key_bytes']}->{ra['key_bytes']} B ({_pct(ra['key_bytes'], rb['key_bytes'])})",
             "+/-5 %(64K)", _verdict(t["redis_key_bytes_back_within_5pct"])),
            ("Redis subscriptions / group members",
             f"{rb['subscriptions']}->{ra['subscriptions']} / "
             f"{rb['group_members']}->{ra['group_members']}", "+/-5 % (>=5)",
             _verdict(t["redis_subscriptions_back_within_5pct"])),
            ("Redis app connections", f"{rb['connections']}->{ra['connections']}", "(info)", "-"),
            ("Redis keys/memory/subs back after", f"{back.get('redis_persistent_keys')} s / "
             f"{back.get('redis_key_bytes')} s / {back.get('redis_subscriptions')} s",
             f"<= {RETURN_WAIT_S:.0f} s", "-"),
        ]
    errors = sum(r["client_errors"].values())
    rows.append(("client errors / app log errors",
                 f"{errors} / {r['app_log']['errors']}", "0", _verdict(
                     errors == 0 and r["app_log"]["errors"] == 0)))
    return rows


def table(result: dict[str, Any]) -> str:
    lines = [f"Memory benchmark ({'quick' if result['quick'] else 'full'}): app = one daphne "
             f"process, RSS = VmRSS; pinned: {result['environment']['pinned']}",
             f"{'mode':<9} {'metric':<46} {'value':<32} {'target':<11} result"]
    for mode in result["modes"].values():
        lines.append(f"{mode['mode']}: channel layer {mode.get('channel_layer', '?')}"
                     + (f", REDIS_URL={mode['redis_url']}" if mode["redis_url"] else ""))
        for metric, value, target, verdict in _rows(mode):
            lines.append(f"{mode['mode']:<9} {metric:<46} {value:<32} {target:<11} {verdict}")
    env = result["environment"]
    lines.append(f"Machine: {env['cpus']} CPUs, 1-min load average at start/end "
                 f"{env['loadavg_1m_start_end']}; wall {result['wall_s']} s")
    return "\n".join(lines)


# --- entry points -------------------------------------------------------------------------------
def _stderr(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def run(quick: bool = False, redis: bool = True, *, redis_url: str = REDIS_URL,
        json_path: Path | None = None, ws_compression: str = "deflate") -> dict[str, Any]:
    """Both modes (embedded, then Redis unless redis=False); writes
    bench/results/memory-<UTC time>.json and returns the report (its path in "json").

    `redis_url` must name DB 13: the run empties it. The app's channel layer is whatever its
    settings choose (CHANNEL_LAYER from the environment passes through)."""
    if urlsplit(redis_url).path != "/13":
        raise RuntimeError(f"{redis_url}: the Redis URL must name database 13 (it is flushed)")
    plan = QUICK if quick else FULL
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    loadavg = os.getloadavg()[0]
    t0 = time.monotonic()
    modes: dict[str, Any] = {}
    for mode in ("embedded", "redis") if redis else ("embedded",):
        modes[mode] = run_mode(mode, plan, quick, stamp, _stderr, redis_url, ws_compression)
    path = json_path or RESULTS / f"memory-{stamp}.json"
    report = {
        "benchmark": "memory", "started": stamp, "quick": quick, "plan": asdict(plan),
        "wall_s": round(time.monotonic() - t0, 1), "json": str(path),
        "targets_kib": {"idle": IDLE_TARGET_KIB, "active": ACTIVE_TARGET_KIB,
                        "return_tolerance": RETURN_TOLERANCE},
        "environment": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "pinned": all(m["pinned"] for m in modes.values()),
                        "loadavg_1m_start_end": [round(loadavg, 2),
                                                 round(os.getloadavg()[0], 2)]},
        "modes": modes,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    return report


def _raise_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # run the `finally` that stops the child processes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/memory.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N: under two minutes")
    parser.add_argument("--no-redis", action="store_true", help="embedded mode only")
    parser.add_argument("--json", type=Path,
                        help="output file (default bench/results/memory-<UTC time>.json)")
    parser.add_argument("--redis-url", default=REDIS_URL,
                        help=f"REDIS_URL of the Redis mode; DB 13 only, it is flushed "
                             f"(default {REDIS_URL})")
    parser.add_argument("--ws-compression", choices=("deflate", "none"), default="deflate",
                        help="what the sockets offer: permessage-deflate, as browsers do "
                             "(default), or nothing")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_exit)
    try:
        report = run(quick=args.quick, redis=not args.no_redis, redis_url=args.redis_url,
                     json_path=args.json.resolve() if args.json else None,
                     ws_compression=args.ws_compression)
    except (RuntimeError, redis_lib.RedisError) as exc:
        _stderr(f"memory benchmark failed: {exc}")
        return 1
    print(table(report))
    print(f"\nJSON: {report['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
