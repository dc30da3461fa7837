"""Relay benchmark (issue 4): what the app adds on top of the provider's own stream.

Arms, interleaved in one run (A0 A1 A2 A0 A1 A2 ...) at each concurrency K:

- A0: this client reads the emulator's Cloudflare SSE stream directly (httpx), same prompt,
  same pace. It is the floor: what a perfect relay would deliver.
- A1: through the app, text path: POST /c/<id>/messages/ on a conversation whose websocket is
  already open (as a browser tab does), then the answer arrives as websocket frames. The
  answer runs on daphne's own loop (the in-process runner).
- A2: through the app, vision path: the same with the Cloudflare vision model and an uploaded
  image; the answer runs in a Celery worker, which publishes its frames through the Redis
  channel layer to daphne. Needs the Redis stack (Redis + PostgreSQL + one worker).

The script starts its own emulator, daphne (and, for A2, Celery worker) processes on free
127.0.0.1 ports (app and worker pinned to core 0, emulator and this load generator to core 1
when `taskset` and two cores exist), on a separate VAR_DIR and a fresh database, waits until
they answer, runs, and stops them. Every number is reported against A0 of the same run.
`--capacity` doubles K until the app no longer keeps up. Method and metrics: bench/README.md.

    .venv/bin/python bench/relay.py                      # K=1,10,100, arms A0,A1,A2
    .venv/bin/python bench/relay.py --quick              # about a minute
    .venv/bin/python bench/relay.py --arms A0,A1         # embedded stack (SQLite, no Redis)
    .venv/bin/python bench/relay.py --k 1 --tokens 20 --repeat 200   # >= 200 TTFT samples
    .venv/bin/python bench/relay.py --capacity --k-max 256           # K = 1, 2, 4, ... 256
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import fcntl
import hashlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode
from websockets.typing import Origin

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# The emulator's default (fake) credentials, see providers/emulators/README.md.
CF_ACCOUNT = "0123456789abcdef0123456789abcdef"
CF_TOKEN = "cf-emu-token-0001"
CF_MODEL = "@cf/meta/llama-3.2-3b-instruct"
CF_VISION_MODEL = "@cf/meta/llama-3.2-11b-vision-instruct"
EMULATOR_ENV = {
    "CLOUDFLARE_ACCOUNT_ID": CF_ACCOUNT,
    "CLOUDFLARE_API_TOKEN": CF_TOKEN,
    "DASHSCOPE_API_KEY": "sk-emu-dashscope-0001",
    "QIANFAN_AK": "emu-qianfan-ak",
    "QIANFAN_SK": "emu-qianfan-sk",
}
# Variables of the developer's shell that would point the app elsewhere or change its mode.
STRIPPED_ENV = (
    "APP_ENV", "DATABASE_URL", "REDIS_URL", "VAR_DIR", "SECRET_KEY", "FIELD_ENCRYPTION_KEYS",
    "SITE_URL", "ALLOWED_HOSTS", "DJANGO_SETTINGS_MODULE", "DJANGO_ALLOW_ASYNC_UNSAFE",
    "STREAM_COALESCE_MS", "RATE_LIMIT_PER_MINUTE", "MAX_CONCURRENT_ANSWERS", "LOG_LEVEL",
    "DEBUG", "CLOUDFLARE_BASE_URL", "DASHSCOPE_BASE_URL", "QIANFAN_BASE_URL", "MEDIA_ROOT",
    "S3_BUCKET", "CHANNEL_CAPACITY", "DB_POOL_MIN", "DB_POOL_MAX", "DB_POOL_TIMEOUT",
    *EMULATOR_ENV,
)
REDIS_URL = "redis://127.0.0.1:6379/14"  # this benchmark's own Redis database (FLUSHDB'd)
PG_URL = "postgres://postgres@127.0.0.1:5432/llamachat_bench"  # dropped and created per run
ARMS = ("A0", "A1", "A2")
# The emulator echoes the first 40 characters of the prompt: a longer fixed prefix makes every
# answer of an arm the same text, while the tag after it identifies the stream in the
# emulator's recorded requests. (The vision path sends the conversation flattened into one
# prompt, "User: <first message>...": its answer is the same for every A2 stream, but not the
# text answer, so it is learnt separately.)
PROMPT_PREFIX = "Relay benchmark prompt, identical across all streams:"
TAG_RE = re.compile(r"#(bench-[0-9a-z-]+)")
TERMINAL = frozenset({"complete", "failed", "stopped", "interrupted"})
ACK_EVERY = 32 * 1024  # what static/js/chat.js does (the protocol asks for <= 128 KB)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CSRF_CHARS = string.ascii_letters + string.digits
# A conversation is replaced by a fresh one after this many measured answers: the emulator
# elides recorded message lists longer than 64 items (the tag would be lost), and the history
# the app reads and sends for every answer stays bounded.
SLOT_ROUNDS = 20
# Capacity search: the limits of docs/performance.md ("added p99 <= 100 ms and delivered rate
# >= 0.95 R").
CAPACITY_ADDED_MS = 100.0
CAPACITY_RATE = 0.95

# One user per concurrent stream (K streams = K people), each with a session made here rather
# than through the login form (no password hashing on the app's core).
SETUP_CODE = """
import json, os
from importlib import import_module
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth import get_user_model, load_backend
from django.core.management import call_command
call_command("migrate", verbosity=0, interactive=False)
call_command("sync_providers")
store = import_module(settings.SESSION_ENGINE).SessionStore
# The first backend that can load a user (a lockout backend such as axes' cannot).
backend = next(path for path in settings.AUTHENTICATION_BACKENDS
               if hasattr(load_backend(path), "get_user"))
keys = []
for index in range(int(os.environ["BENCH_USERS"])):
    user, _ = get_user_model().objects.get_or_create(username=f"bench-{index}")
    session = store()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = backend
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    keys.append(session.session_key)
path = os.environ["BENCH_SESSIONS"]
with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
    json.dump(keys, out)
"""


# --- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    ks: tuple[int, ...]  # the levels to run (with --capacity: 1, 2, 4, ... up to k_max)
    tokens: int
    rate: float
    ttft: float
    repeat: int
    spread: float
    window_ms: int
    timeout: float
    model: str
    a0_client: str
    quick: bool
    json_path: Path
    var_dir: Path
    pin: bool
    arms: tuple[str, ...] = ("A0", "A1")
    stack: str = "embedded"  # "embedded" (SQLite, in-memory layer) or "redis" (+ PG, worker)
    vision_model: str = "llama-3.2-11b-vision"
    capacity: bool = False
    k_max: int = 1024
    worker_pool: str = "threads"
    worker_concurrency: int = 0  # 0: no worker
    redis_url: str = REDIS_URL
    database_url: str = PG_URL
    ws_compression: str = "deflate"  # what the client offers: "deflate" (as browsers) or "none"

    @property
    def window(self) -> float:
        return self.window_ms / 1000

    @property
    def app_arms(self) -> tuple[str, ...]:
        return tuple(arm for arm in self.arms if arm != "A0")

    @property
    def redis(self) -> bool:
        return self.stack == "redis"

    def rounds(self, k: int) -> int:
        """Rounds at level k: --repeat, but fewer at high K in a capacity search (a level of
        K >= 8 streams per round already gives K samples per round)."""
        if not self.capacity:
            return self.repeat
        return max(1, min(self.repeat, math.ceil(self.repeat * 8 / k)))

    def model_for(self, arm: str) -> str:
        return self.vision_model if arm == "A2" else self.model

    def prompt(self, tag: str, magic: str | None = None) -> str:
        magic = magic or f"[[emu:tokens n={self.tokens} rate={self.rate:g} ttft={self.ttft:g}]]"
        return f"{PROMPT_PREFIX} #{tag} {magic}"


def _ks(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("--k takes integers like 1,10,100") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("--k takes positive integers like 1,10,100")
    return values


def _arms(text: str) -> tuple[str, ...]:
    names = {part.strip().upper() for part in text.split(",") if part.strip()}
    if not names <= set(ARMS) or "A0" not in names or len(names) < 2:
        raise argparse.ArgumentTypeError("--arms takes A0 and at least one of A1, A2, "
                                         "e.g. A0,A1,A2")
    return tuple(arm for arm in ARMS if arm in names)


def capacity_levels(k_max: int) -> tuple[int, ...]:
    """1, 2, 4, ... and k_max itself when it is not a power of two."""
    levels = [1 << i for i in range(k_max.bit_length()) if 1 << i <= k_max]
    return tuple(levels + ([k_max] if levels[-1] != k_max else []))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/relay.py", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--k", type=_ks, help="concurrency levels (default 1,10,100; quick 1,10)")
    add("--arms", type=_arms, help="arms to interleave (default A0,A1,A2; with --capacity "
                                   "A0,A1). A2 needs the Redis stack")
    add("--stack", choices=("auto", "embedded", "redis"), default="auto",
        help="embedded: SQLite + in-memory channel layer; redis: PostgreSQL + Redis channel "
             "layer + a Celery worker (A1 then also runs on it); auto: redis iff A2 is on")
    add("--tokens", type=int, help="answer length (default 500; quick 60)")
    add("--rate", type=float, help="tokens per second (default 50; quick 100)")
    add("--ttft", type=float, help="emulator TTFT, s (default 0.2; quick 0.1)")
    add("--repeat", type=int, help="rounds per K (default 3; quick 2); with --capacity the "
                                   "most rounds of a level (fewer above K=8)")
    add("--spread", type=float, help="start the K streams evenly over this many seconds, not "
                                     "as one burst (default 1.0; quick 0.2; 0 = burst)")
    add("--window-ms", type=int, default=100,
        help="the app's coalescing window (sets STREAM_COALESCE_MS; default 100 as the app)")
    add("--ws-compression", choices=("deflate", "none"), default="deflate",
        help="what the websocket client offers: permessage-deflate, as every browser does "
             "(default), or nothing (wire bytes are then the frames' text)")
    add("--timeout", type=float,
        help="per-stream limit, s (default: ttft + tokens/rate + spread + 30)")
    add("--model", default="llama-3.2-3b", help="text model slug of A1 (a Cloudflare one)")
    add("--vision-model", default="llama-3.2-11b-vision",
        help="vision model slug of A2 (a Cloudflare one)")
    add("--a0-client", choices=("httpx", "raw"),
        help="A0's HTTP client: httpx (default) or a bare asyncio reader that keeps the load "
             "core free at high K (default with --capacity)")
    add("--capacity", action="store_true",
        help="capacity search: K = 1, 2, 4, ... until a level fails (see README)")
    add("--k-max", type=int, default=1024, help="largest K of the capacity search (1024)")
    add("--worker-pool", choices=("threads", "prefork"), default="threads",
        help="Celery pool of the A2 worker (default threads: one process)")
    add("--worker-concurrency", type=int,
        help="Celery worker concurrency (default: the largest K that runs A2)")
    add("--redis-url", default=REDIS_URL, help=f"Redis database of the run, FLUSHDB'd "
                                               f"(default {REDIS_URL})")
    add("--database-url", default=PG_URL, help="PostgreSQL database of the run, dropped and "
                                               f"created (default {PG_URL})")
    add("--quick", action="store_true", help="small defaults: about a minute in all")
    add("--json", type=Path, help="output file (default bench/results/relay-<timestamp>.json)")
    add("--var-dir", type=Path, default=RESULTS / "var",
        help="VAR_DIR of the app under test (its SQLite file is recreated)")
    add("--no-pin", action="store_true", help="do not pin processes to cores")
    return parser


def parse_args(argv: Sequence[str] | None = None, *,
               default_arms: tuple[str, ...] = ("A0", "A1")) -> Config:
    """The command line as a Config. The script's own default arms are A0,A1,A2 (`main`);
    other callers (bench/memory.py) keep the embedded stack unless they ask for A2."""
    parser = _parser()
    args = parser.parse_args(argv)
    quick = bool(args.quick)

    def pick(value: Any, full: Any, fast: Any) -> Any:
        return value if value is not None else (fast if quick else full)

    tokens = pick(args.tokens, 500, 60)
    rate = pick(args.rate, 50.0, 100.0)
    ttft = pick(args.ttft, 0.2, 0.1)
    spread = pick(args.spread, 1.0, 0.2)
    repeat = pick(args.repeat, 3, 2)
    if tokens < 2 or rate <= 0 or ttft < 0 or spread < 0 or repeat < 1 or args.window_ms < 0:
        parser.error("need --tokens >= 2, --rate > 0, --ttft >= 0, --spread >= 0, --repeat >= 1")
    if args.capacity and args.k is not None:
        parser.error("--capacity chooses the levels itself (use --k-max)")
    if args.k_max < 1:
        parser.error("need --k-max >= 1")
    arms = args.arms or (("A0", "A1") if args.capacity else default_arms)
    stack = args.stack if args.stack != "auto" else ("redis" if "A2" in arms else "embedded")
    if "A2" in arms and stack != "redis":
        parser.error("A2 runs in a Celery worker: it needs --stack redis (or auto)")
    ks = capacity_levels(args.k_max) if args.capacity else pick(args.k, (1, 10, 100), (1, 10))
    workers = args.worker_concurrency or (max(ks) if "A2" in arms else 0)
    if "A2" in arms and workers < 1:
        parser.error("need --worker-concurrency >= 1")
    # A guard for other people's data: the run empties this Redis database and drops this
    # PostgreSQL database.
    if stack == "redis" and not _own_redis(args.redis_url):
        parser.error("--redis-url must name a database number: redis://host:port/<db>")
    if stack == "redis" and not _own_postgres(args.database_url):
        parser.error("--database-url must be postgres://.../<name containing 'bench'>")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Config(
        ks=ks, tokens=tokens, rate=rate, ttft=ttft, repeat=repeat, spread=spread,
        window_ms=args.window_ms,
        timeout=args.timeout or ttft + tokens / rate + spread + 30.0, model=args.model,
        a0_client=args.a0_client or ("raw" if args.capacity else "httpx"), quick=quick,
        json_path=(args.json or RESULTS / f"relay-{stamp}.json").resolve(),
        var_dir=args.var_dir.resolve(), pin=not args.no_pin, arms=arms, stack=stack,
        vision_model=args.vision_model, capacity=bool(args.capacity), k_max=args.k_max,
        worker_pool=args.worker_pool, worker_concurrency=workers, redis_url=args.redis_url,
        database_url=args.database_url, ws_compression=args.ws_compression,
    )


def _own_redis(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("redis", "rediss") and parts.path.strip("/").isdigit()


def _own_postgres(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("postgres", "postgresql") and "bench" in parts.path.strip("/")


# --- processes ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stat_fields(pid: int) -> list[str] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()  # the name may contain spaces


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    fields = _stat_fields(pid)
    return math.nan if fields is None else (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a prefork Celery worker's children do the work)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(current := todo.pop())
        todo += children.get(current, [])
    return tree


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def can_pin() -> bool:
    return (shutil.which("taskset") is not None and hasattr(os, "sched_setaffinity")
            and len(os.sched_getaffinity(0)) >= 2)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} process exited with {proc.returncode}; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not healthy after {timeout:.0f}s; see {log}")


def _wait_log(marker: bytes, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}; see {log}")
        with contextlib.suppress(OSError):
            if marker in log.read_bytes():
                return
        time.sleep(0.2)
    raise RuntimeError(f"no {marker!r} after {timeout:.0f}s; see {log}")


def reset_stores(cfg: Config) -> None:
    """An empty Redis database and a new PostgreSQL database, both the run's own."""
    import psycopg
    import redis
    from psycopg import sql

    try:
        client = redis.Redis.from_url(cfg.redis_url, socket_timeout=10)
        try:
            client.flushdb()
        finally:
            client.close()
    except redis.RedisError as exc:
        raise RuntimeError(f"Redis {cfg.redis_url}: {type(exc).__name__}: {exc}") from None
    parts = urlsplit(cfg.database_url)
    name = parts.path.strip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            # FORCE: a worker of an aborted run may still hold a connection.
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise RuntimeError(f"PostgreSQL {admin}: {type(exc).__name__}: {exc}") from None


class Stack:
    """The emulator and the app under test (daphne, and a Celery worker on the Redis stack):
    own ports, own database, own logs."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pinned = cfg.pin and can_pin()
        self.emu_port = free_port()
        self.app_port = free_port()
        self.emu_url = f"http://127.0.0.1:{self.emu_port}"
        self.app_url = f"http://127.0.0.1:{self.app_port}"
        self.sessions: list[str] = []  # one signed-in user per concurrent stream
        self.db_path = cfg.var_dir / "bench.sqlite3"
        names = ("emulator", "setup", "app", *(("worker",) if cfg.worker_concurrency else ()))
        self.logs = {name: cfg.var_dir / f"{name}.log" for name in names}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._locks: list[int] = []  # descriptors of the flock'd files

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in STRIPPED_ENV}
        env.update(EMULATOR_ENV)
        env.update({
            "VAR_DIR": str(self.cfg.var_dir), "DATABASE_URL": f"sqlite:///{self.db_path}",
            # The app's own origin: websockets are accepted from SITE_URL's origin only.
            "SITE_URL": self.app_url,
            "DEBUG": "0", "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1",
            "STREAM_COALESCE_MS": str(self.cfg.window_ms),
            # Per-user limits stay out of the way (each user has one stream at a time, but a
            # long --repeat posts more than the default 20 messages a minute).
            "RATE_LIMIT_PER_MINUTE": "100000", "MAX_CONCURRENT_ANSWERS": "1000",
            "CLOUDFLARE_BASE_URL": f"{self.emu_url}/client/v4",
            "DASHSCOPE_BASE_URL": f"{self.emu_url}/api/v1", "QIANFAN_BASE_URL": self.emu_url,
        })
        if self.cfg.redis:
            env.update({"DATABASE_URL": self.cfg.database_url, "REDIS_URL": self.cfg.redis_url})
        return env

    def _pin(self, core: int) -> list[str]:
        return ["taskset", "-c", str(core)] if self.pinned else []

    def _spawn(self, name: str, argv: list[str], core: int,
               group: bool = False) -> subprocess.Popen[bytes]:
        log = self.logs[name].open("wb")
        try:
            # group: its own process group, so a prefork worker's children can be stopped too.
            proc = subprocess.Popen([*self._pin(core), *argv], cwd=ROOT, env=self.env(),
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=group)
        finally:
            log.close()  # the child holds its own descriptor
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        self.cfg.var_dir.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):  # a fresh database every run
            Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
        shutil.rmtree(self.cfg.var_dir / "media", ignore_errors=True)  # earlier runs' uploads
        if self.cfg.redis:
            self._lock_stores()
            reset_stores(self.cfg)
        # Licence accepted up front: every batch resets the emulator, which would otherwise
        # make the first vision call of each batch a 403 + "agree" round trip.
        emulator = self._spawn("emulator", [sys.executable, "-m", "providers.emulators",
                                            "--port", str(self.emu_port),
                                            "--cloudflare-licence-agreed"], core=1)
        self._setup_database()
        _wait_healthy(f"{self.emu_url}/_emulator/health", emulator, self.logs["emulator"], 30)
        if self.cfg.worker_concurrency:
            self._start_worker()
        app = self._spawn("app", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p",
                                  str(self.app_port), "chatsite.asgi:application"], core=0)
        _wait_healthy(f"{self.app_url}/healthz", app, self.logs["app"], 60)
        if "worker" in self.procs:
            _wait_log(b" ready.", self.procs["worker"], self.logs["worker"], 60)
        if self.pinned:
            os.sched_setaffinity(0, {1})  # the load generator shares core 1 with the emulator

    def _lock_stores(self, wait: float = 900.0) -> None:
        """One run at a time per Redis database and per PostgreSQL database: a second run
        would flush and drop them under the first, and its worker would take the first's
        tasks. Waits for the other run (a lock goes with its process)."""
        self._locks = []
        for url in sorted((self.cfg.redis_url, self.cfg.database_url)):  # one order: no deadlock
            key = hashlib.sha256(url.encode()).hexdigest()[:12]
            self._locks.append(fd := os.open(f"/tmp/llamachat-relay-bench-{key}.lock",
                                             os.O_RDWR | os.O_CREAT, 0o644))
            deadline = time.monotonic() + wait
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"another relay benchmark keeps using {url}; pass "
                                           "other --redis-url / --database-url") from None
                    if not told:
                        told = True
                        print(f"another relay benchmark uses {url}: waiting for it to end",
                              file=sys.stderr, flush=True)
                    time.sleep(1.0)

    def _start_worker(self) -> None:
        """One Celery worker beside daphne on core 0, as tests/conftest.py starts one."""
        self._spawn("worker", [
            sys.executable, "-m", "celery", "-A", "chatsite", "worker", "--loglevel=INFO",
            f"--pool={self.cfg.worker_pool}", f"--concurrency={self.cfg.worker_concurrency}",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-n", f"bench-{self.app_port}@%h"], core=0, group=True)

    def _setup_database(self) -> None:
        sessions = self.cfg.var_dir / "sessions.json"
        env = {**self.env(), "BENCH_USERS": str(max(self.cfg.ks)),
               "BENCH_SESSIONS": str(sessions)}
        with self.logs["setup"].open("wb") as log:
            done = subprocess.run([sys.executable, "manage.py", "shell", "-c", SETUP_CODE],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"database setup failed; see {self.logs['setup']}")
        self.sessions = json.loads(sessions.read_text())
        sessions.unlink()

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def app_cpu(self) -> tuple[float, float]:
        """CPU seconds so far of daphne and of the worker (with its pool's children)."""
        worker = (sum(cpu_seconds(pid) for pid in process_tree(self.pid("worker")))
                  if "worker" in self.procs else 0.0)
        return cpu_seconds(self.pid("app")), worker

    def app_rss(self) -> tuple[int | None, int | None]:
        worker = (sum(rss_kib(pid) or 0 for pid in process_tree(self.pid("worker")))
                  if "worker" in self.procs else None)
        return rss_kib(self.pid("app")), worker

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for name, proc in self.procs.items():
            try:
                proc.wait(20 if name == "worker" else 10)
            except subprocess.TimeoutExpired:
                if name == "worker":
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)  # its own group (start_new_session)
                else:
                    proc.kill()
                proc.wait(5)
        for fd in self._locks:
            os.close(fd)  # releases the flock
        self._locks = []

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for path in self.logs.values():
            with contextlib.suppress(OSError):
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(parts)

    def app_log_summary(self) -> dict[str, Any]:
        """Error and warning lines daphne and the worker logged (findings of the run)."""
        lines: list[str] = []
        for name in ("app", "worker"):
            with contextlib.suppress(OSError, KeyError):
                lines += self.logs[name].read_text(errors="replace").splitlines()
        leveled = [(line, m.group(1)) for line in lines if (m := LEVEL_RE.search(line))]
        errors = [line for line, level in leveled if level != "WARNING"]
        warnings = [line for line, level in leveled if level == "WARNING"]
        samples: list[str] = []
        for line in errors + warnings:
            if line[24:] not in {s[24:] for s in samples} and len(samples) < 8:
                samples.append(line[:300])
        return {"errors": len(errors), "warnings": len(warnings),
                "tracebacks": sum("Traceback" in line for line in lines), "samples": samples}


# Django's "<time> LEVEL name: ..." and Celery's "[<time>: LEVEL/Process] ..." lines.
LEVEL_RE = re.compile(r"[ :](ERROR|CRITICAL|WARNING)[ /]")


# --- the answer every stream must deliver --------------------------------------------------------
def u16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of the websocket offsets."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


@dataclass(frozen=True)
class Answer:
    tokens: tuple[str, ...]
    text: str
    text_bytes: int
    ends_u16: tuple[int, ...]  # where each token ends, in UTF-16 units from the start


def make_answer(tokens: Sequence[str]) -> Answer:
    ends: list[int] = []
    total = 0
    for token in tokens:
        total += u16_len(token)
        ends.append(total)
    text = "".join(tokens)
    return Answer(tuple(tokens), text, len(text.encode()), tuple(ends))


# --- one stream ---------------------------------------------------------------------------------
@dataclass
class StreamResult:
    arm: str
    k: int
    round: int
    index: int
    tag: str
    error: str = ""
    t_send: float = 0.0  # request (A0) or POST (A1, A2) sent
    t_response: float | None = None  # A1, A2: the POST answered
    t_upstream: float | None = None  # the emulator received the model call (its recording)
    arrivals: list[float] = field(default_factory=list)  # per token: when it was readable here
    ts: list[float] = field(default_factory=list)  # A0: the emulator's "ts" per token
    wire_bytes: int = 0  # A1, A2: websocket payload bytes on the wire; A0: SSE body bytes
    payload_bytes: int = 0  # A1, A2: the frames' text (what the wire carries when uncompressed)
    frames: int = 0  # A1, A2: websocket frames; A0: HTTP chunks
    wire_by_kind: dict[str, int] = field(default_factory=dict)  # A1, A2: "d", "b", "other"
    payload_by_kind: dict[str, int] = field(default_factory=dict)  # the same, uncompressed
    stream_frames: int = 0  # frames from the first token to the end of the answer
    frame_span: float | None = None  # first to last frame carrying the answer, s

    status: str = ""  # A1/A2: the final state
    slot_tag: str = ""  # A1/A2: the tag of the conversation's first message


def _due(res: StreamResult, cfg: Config, index: int) -> float:
    """The emulator's schedule for token `index`: arrival + ttft + index/rate (its Pacer)."""
    assert res.t_upstream is not None
    return res.t_upstream + cfg.ttft + index / cfg.rate


async def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def sse_events(buffer: bytearray) -> list[bytes]:
    """Complete events at the front of `buffer` (removed from it)."""
    if b"\r" in buffer:  # CRLF or CR line endings: normalise (the emulator sends LF)
        buffer[:] = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    events = []
    while (end := buffer.find(b"\n\n")) >= 0:
        events.append(bytes(buffer[:end]))
        del buffer[:end + 2]
    return events


class StatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


async def httpx_chunks(http: httpx.AsyncClient, url: str, body: bytes,
                        headers: dict[str, str]) -> AsyncGenerator[bytes, None]:
    async with http.stream("POST", url, content=body, headers=headers) as response:
        if response.status_code != 200:
            raise StatusError(response.status_code)
        async for chunk in response.aiter_raw():
            yield chunk


async def raw_chunks(url: str, body: bytes,
                      headers: dict[str, str]) -> AsyncGenerator[bytes, None]:
    """The same request over a bare asyncio connection: an HTTP/1.1 reader costing a fraction
    of httpx's CPU per chunk, so the load core stays free at high K (--a0-client raw)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    try:
        lines = [f"POST {parts.path} HTTP/1.1", f"Host: {host}:{port}",
                 f"Content-Length: {len(body)}",
                 *(f"{name}: {value}" for name, value in headers.items()), "", ""]
        writer.write("\r\n".join(lines).encode() + body)
        status = int((await reader.readline()).split()[1])
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            chunked = chunked or (name.strip().lower() == "transfer-encoding"
                                  and "chunked" in value.lower())
        if status != 200:
            raise StatusError(status)
        while chunked:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                return
            yield (await reader.readexactly(size + 2))[:-2]
        while data := await reader.read(65536):  # close-delimited body
            yield data
    finally:
        writer.close()


async def run_a0(http: httpx.AsyncClient, emu_url: str, cfg: Config, res: StreamResult,
                 answer: Answer | None, start_at: float, magic: str | None = None,
                 body: dict[str, Any] | None = None, model: str = CF_MODEL) -> list[str]:
    """Read the emulator's stream directly; returns the token texts."""
    await _sleep_until(start_at)
    url = f"{emu_url}/client/v4/accounts/{CF_ACCOUNT}/ai/run/{model}"
    body = body or {"messages": [{"role": "user", "content": cfg.prompt(res.tag, magic)}],
                    "stream": True, "max_tokens": max(1024, cfg.tokens)}
    payload = json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {CF_TOKEN}", "Accept": "text/event-stream",
               "Content-Type": "application/json"}
    texts: list[str] = []
    done = False
    res.t_send = time.monotonic()
    source = (raw_chunks(url, payload, headers) if cfg.a0_client == "raw"
              else httpx_chunks(http, url, payload, headers))

    try:
        async with asyncio.timeout(cfg.timeout), contextlib.aclosing(source) as chunks:
            buffer = bytearray()
            async for chunk in chunks:
                now = time.monotonic()
                res.wire_bytes += len(chunk)
                res.frames += 1
                buffer += chunk
                for event in sse_events(buffer):
                    done = _a0_event(event, now, res, texts) or done
    except StatusError as exc:
        res.error = f"http_{exc.status}"
    except TimeoutError:
        res.error = "timeout"
    except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
        res.error = f"transport_{type(exc).__name__}"
    if not res.error:
        if not done:
            res.error = "no_done"
        elif answer is not None and tuple(texts) != answer.tokens:
            res.error = "text_mismatch"
    if res.arrivals:
        res.frame_span = res.arrivals[-1] - res.arrivals[0]
        res.stream_frames = len(set(res.arrivals))
    return texts


def event_payloads(event: bytes) -> tuple[list[dict[str, Any]], bool]:
    """The JSON payloads of one Cloudflare SSE event, and whether it was `[DONE]`."""
    payloads: list[dict[str, Any]] = []
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return payloads, True
        payloads.append(json.loads(data))
    return payloads, False


def _a0_event(event: bytes, now: float, res: StreamResult, texts: list[str]) -> bool:
    """Record one SSE event; True at [DONE]."""
    payloads, done = event_payloads(event)
    for payload in payloads:
        text = payload.get("response")
        if isinstance(text, str) and text:
            texts.append(text)
            res.arrivals.append(now)
            res.ts.append(float(payload.get("ts", math.nan)))
    return done


def tiny_png(side: int = 16) -> bytes:
    """A valid side x side RGB PNG (a gradient), made without any imaging library."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    rows = b"".join(b"\x00" + bytes(value for x in range(side)
                                    for value in (x * 255 // side, y * 255 // side, 128))
                    for y in range(side))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


PNG = tiny_png()


class AppClient:
    """One signed-in user, like a browser: session and CSRF cookies on every request."""

    def __init__(self, base_url: str, transport: httpx.AsyncBaseTransport,
                 session_key: str) -> None:
        self.base_url = base_url
        # Any 32-character secret is a valid CSRF cookie; the header must repeat it.
        self.csrf = "".join(secrets.choice(CSRF_CHARS) for _ in range(32))
        self.cookie = f"sessionid={session_key}; csrftoken={self.csrf}"
        self.http = httpx.AsyncClient(base_url=base_url, transport=transport, timeout=120.0)

    def _headers(self, **extra: str) -> dict[str, str]:
        return {"Cookie": self.cookie, "X-CSRFToken": self.csrf, **extra}

    async def new_conversation(self, model: str, text: str) -> str:
        response = await self.http.post("/c/new/", headers=self._headers(), data={
            "model": model, "text": text, "client_id": str(uuid.uuid4())})
        match = re.fullmatch(r"/c/([0-9a-f-]{36})/", response.headers.get("location", ""))
        if response.status_code != 302 or match is None:
            error = re.search(r'class="[^"]*error[^"]*"[^>]*>\s*(?:<li>)?([^<]{1,200})',
                              response.text)
            raise RuntimeError(f"POST /c/new/ answered HTTP {response.status_code}"
                               + (f": {error.group(1).strip()}" if error else ""))
        return match.group(1)

    async def upload_image(self, data: bytes) -> str:
        """The composer's upload (POST /uploads/): the id a message then refers to."""
        response = await self.http.post("/uploads/", headers=self._headers(),
                                        files={"image": ("bench.png", data, "image/png")})
        if response.status_code != 201:
            raise RuntimeError(f"POST /uploads/ answered HTTP {response.status_code}: "
                               f"{response.text[:200]}")
        return str(response.json()["id"])

    async def post_message(self, conversation: str, text: str,
                           attachments: Sequence[str] = ()) -> httpx.Response:
        return await self.http.post(f"/c/{conversation}/messages/",
                                    headers=self._headers(Accept="application/json"),
                                    data={"text": text, "client_id": str(uuid.uuid4()),
                                          "attachments": list(attachments)})


Frame = tuple[float, int, int, Any]  # arrival, bytes on the wire, bytes of text, decoded JSON


class CountingDeflate(ClientPerMessageDeflateFactory):
    """websockets' permessage-deflate offer, with the extension it agrees recording the
    compressed size of every data message it inflates (one entry per message, in order)."""

    def __init__(self, sizes: collections.deque[int]) -> None:
        super().__init__(client_max_window_bits=True, compress_settings={"memLevel": 5})
        self.sizes = sizes

    def process_response_params(self, params: Any, accepted: Any) -> Any:
        extension = super().process_response_params(params, accepted)
        original, sizes, partial = extension.decode, self.sizes, [0]

        def decode(frame: WsFrame, *, max_size: int | None = None) -> WsFrame:
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                partial[0] += len(frame.data)
                if frame.fin:
                    sizes.append(partial[0])
                    partial[0] = 0
            return original(frame, max_size=max_size)

        extension.decode = decode  # type: ignore[method-assign]
        return extension


class Slot:
    """One conversation with its websocket open, like a browser tab showing it."""

    def __init__(self, app: AppClient, conversation: str, ws: ClientConnection,
                 tag: str = "", wire: collections.deque[int] | None = None) -> None:
        self.app = app
        self.conversation = conversation
        self.ws = ws
        self.tag = tag  # of the conversation's first message
        self.answers = 0  # measured answers so far
        self.received = 0
        self.acked = 0
        self.recording = False
        self.log: list[Frame] = []
        # Compressed size per message, filled by CountingDeflate when deflate was agreed.
        self.wire: collections.deque[int] = wire if wire is not None else collections.deque()
        self.terminal: dict[int, str] = {}
        self.active: set[int] = set()
        self.hello = asyncio.Event()
        self.changed = asyncio.Event()
        self.closed = False
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, app: AppClient, conversation: str, tag: str = "",
                   compression: str = "deflate") -> Slot:
        """`compression="deflate"` offers permessage-deflate as browsers do (websockets' own
        offer); each message's compressed payload size is then recorded as it is inflated."""
        base = app.base_url.replace("http://", "ws://", 1)
        sizes: collections.deque[int] = collections.deque()
        extensions = [CountingDeflate(sizes)] if compression == "deflate" else None
        ws = await connect(f"{base}/ws/c/{conversation}/", origin=Origin(app.base_url),
                           additional_headers={"Cookie": app.cookie},
                           compression=None, extensions=extensions, max_size=2**24,
                           ping_interval=None, open_timeout=60)
        return cls(app, conversation, ws, tag, sizes)

    async def _read(self) -> None:
        try:
            while True:
                raw = await self.ws.recv(decode=False)
                now = time.monotonic()
                size = len(raw)
                wire = self.wire.popleft() if self.ws.protocol.extensions else size
                self.received += size
                frame = json.loads(raw)
                if self.recording:
                    self.log.append((now, wire, size, frame))
                if isinstance(frame, dict):
                    self._on_object(frame)
                if self.received - self.acked >= ACK_EVERY:
                    self.acked = self.received
                    await self.ws.send(json.dumps({"type": "ack", "bytes": self.received}))
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self.hello.set()
            self.changed.set()

    def _on_object(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "hello":
            self.active = {int(item["seq"]) for item in frame.get("active", [])}
            self.hello.set()
        elif kind == "state" and frame.get("status") in TERMINAL:
            self.terminal[int(frame["seq"])] = str(frame["status"])
            self.changed.set()

    async def wait_terminal(self, seqs: set[int]) -> None:
        while not seqs <= self.terminal.keys():
            if self.closed:
                raise ConnectionError("websocket closed")
            self.changed.clear()
            await self.changed.wait()

    def begin(self) -> None:
        self.log = []
        self.recording = True

    def end(self) -> list[Frame]:
        self.recording = False
        frames, self.log = self.log, []
        return frames

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


async def open_slot(app: AppClient, cfg: Config, model: str, tag: str) -> Slot:
    """A new conversation, its short first answer finished and its websocket open."""
    text = cfg.prompt(tag, "[[emu:tokens n=12 ttft=0]]")
    conversation = await app.new_conversation(model, text)
    slot = await Slot.open(app, conversation, tag, cfg.ws_compression)
    try:
        await asyncio.wait_for(slot.hello.wait(), 60)
        await asyncio.wait_for(slot.wait_terminal(slot.active), 60)
    except (TimeoutError, ConnectionError) as exc:
        await slot.close()
        raise RuntimeError(f"conversation {conversation}: the first answer did not end "
                           f"({type(exc).__name__})") from None
    return slot


async def open_slots(apps: list[AppClient], cfg: Config, model: str, prefix: str) -> list[Slot]:
    """One conversation per user (K browser tabs); tags `<prefix>-<index>`."""
    gate = asyncio.Semaphore(8)

    async def one(index: int, app: AppClient) -> Slot:
        async with gate:
            return await open_slot(app, cfg, model, f"{prefix}-{index}")

    results = await asyncio.gather(*(one(i, app) for i, app in enumerate(apps)),
                                   return_exceptions=True)
    slots = [r for r in results if isinstance(r, Slot)]
    if len(slots) < len(results):  # close the ones that opened, then report the first failure
        await asyncio.gather(*(slot.close() for slot in slots), return_exceptions=True)
        raise next(r for r in results if isinstance(r, BaseException))
    return slots


async def upload_images(slots: Sequence[Slot]) -> list[str]:
    """One fresh upload per slot (an upload is attached to one message only)."""
    gate = asyncio.Semaphore(16)

    async def one(slot: Slot) -> str:
        async with gate:
            return await slot.app.upload_image(PNG)

    return list(await asyncio.gather(*(one(slot) for slot in slots)))


async def run_app(slot: Slot, cfg: Config, res: StreamResult, answer: Answer,
                  start_at: float, attachment: str | None = None) -> None:
    """A1/A2: POST the prompt (with the uploaded image for A2), read the frames to the end."""
    await _sleep_until(start_at)
    slot.begin()
    seq: int | None = None
    res.t_send = time.monotonic()
    try:
        async with asyncio.timeout(cfg.timeout):
            response = await slot.app.post_message(slot.conversation, cfg.prompt(res.tag),
                                                   [attachment] if attachment else ())
            res.t_response = time.monotonic()
            if response.status_code not in (200, 201):
                res.error = f"post_{response.status_code}"
            else:
                seq = int(response.json()["assistant"]["seq"])
                await slot.wait_terminal({seq})
    except TimeoutError:
        res.error = "timeout"
    except (httpx.HTTPError, ConnectionError) as exc:
        res.error = f"transport_{type(exc).__name__}"
    frames = slot.end()
    slot.answers += 1
    if seq is not None:
        _analyse_app(res, frames, seq, answer)


def frame_kind(frame: Any) -> str:
    """"d" (a delta), "b" (rendered blocks) or "other" (an object frame: new, state, ...)."""
    return frame[0] if isinstance(frame, list) and frame[0] in ("d", "b") else "other"


def _analyse_app(res: StreamResult, frames: list[Frame], seq: int, answer: Answer) -> None:
    """Deltas -> per-token arrival; bytes and frames; text and offsets checked."""
    res.wire_bytes = sum(wire for _t, wire, _s, _f in frames)
    res.payload_bytes = sum(size for _t, _w, size, _f in frames)
    res.frames = len(frames)
    pieces: list[str] = []
    ends: list[tuple[float, int]] = []
    expected = 0
    for now, wire, size, frame in frames:
        kind = frame_kind(frame)
        res.wire_by_kind[kind] = res.wire_by_kind.get(kind, 0) + wire
        res.payload_by_kind[kind] = res.payload_by_kind.get(kind, 0) + size
        if ends:
            res.stream_frames += 1
        if isinstance(frame, list) and frame[:2] == ["d", seq]:
            if not ends:
                res.stream_frames = 1
            offset, text = int(frame[2]), str(frame[3])
            if offset != expected and not res.error:
                res.error = "offset_gap"
            pieces.append(text)
            expected = offset + u16_len(text)
            ends.append((now, expected))
        elif isinstance(frame, dict) and frame.get("type") == "state" and \
                frame.get("seq") == seq and frame.get("status") in TERMINAL:
            res.status = str(frame["status"])
            if ends:
                res.frame_span = now - ends[0][0]
    if res.error:
        return
    if res.status != "complete":
        res.error = f"status_{res.status or 'missing'}"
    elif "".join(pieces) != answer.text:
        res.error = "text_mismatch"
    else:
        res.arrivals = _token_arrivals(ends, answer.ends_u16)


def delivered_text(frames: list[Frame], seq: int) -> str:
    return "".join(str(f[3]) for _t, _w, _s, f in frames
                   if isinstance(f, list) and f[:2] == ["d", seq])


def _token_arrivals(ends: list[tuple[float, int]], token_ends: Sequence[int]) -> list[float]:
    """A token has arrived with the first delta whose end reaches the token's end."""
    arrivals: list[float] = []
    position = 0
    for token_end in token_ends:
        while ends[position][1] < token_end:
            position += 1
        arrivals.append(ends[position][0])
    return arrivals


# --- batches and levels -------------------------------------------------------------------------
@dataclass
class Batch:
    arm: str
    k: int
    round: int
    wall: float
    daphne_cpu: float
    worker_cpu: float  # the Celery worker (0 on the embedded stack)
    bench_cpu: float  # this process (the load generator)
    emulator_cpu: float
    app_rss_kib: int | None
    worker_rss_kib: int | None
    streams: list[StreamResult]

    @property
    def app_cpu(self) -> float:
        """The app is every process of it: daphne plus the worker."""
        return self.daphne_cpu + self.worker_cpu


class Bench:
    def __init__(self, cfg: Config, stack: Stack) -> None:
        self.cfg = cfg
        self.stack = stack
        self.run_id = secrets.token_hex(3)
        self.answer: Answer | None = None  # A0 and A1
        self.vision_answer: Answer | None = None  # A2
        self.batches: list[Batch] = []
        self.levels_run: list[tuple[int, tuple[str, ...]]] = []
        self.capacity: dict[str, Any] | None = None
        self.serial = 0  # numbers the conversations' tags
        self.emu = httpx.AsyncClient(base_url=stack.emu_url, timeout=60.0,
                                     limits=httpx.Limits(max_connections=max(cfg.ks) + 10))

    def answer_for(self, arm: str) -> Answer:
        answer = self.vision_answer if arm == "A2" else self.answer
        assert answer is not None
        return answer

    def tag(self, arm: str, k: int, rnd: int, index: int) -> str:
        return f"bench-{self.run_id}-{arm.lower()}-{k}-{rnd}-{index}"

    def conversation_tag(self, arm: str, k: int) -> str:
        self.serial += 1
        return f"bench-{self.run_id}-conv-{arm.lower()}-{k}-{self.serial}"

    def _cpu(self) -> tuple[float, float, float, float]:
        daphne, worker = self.stack.app_cpu()
        return (daphne, worker, cpu_seconds(os.getpid()),
                cpu_seconds(self.stack.pid("emulator")))

    async def learn_answer(self) -> Answer:
        """One unpaced A0 stream: the token list every measured stream must reproduce."""
        res = StreamResult("A0", 0, 0, 0, f"bench-{self.run_id}-warmup")
        texts = await run_a0(self.emu, self.stack.emu_url, self.cfg, res, None, 0.0,
                             magic=f"[[emu:tokens n={self.cfg.tokens} ttft=0]]")
        if res.error or len(texts) != self.cfg.tokens:
            raise RuntimeError(f"warm-up stream failed: {res.error or len(texts)} tokens")
        await self.emu.post("/_emulator/reset", json={})
        self.answer = make_answer(texts)
        return self.answer

    async def learn_vision_answer(self) -> Answer:
        """A2's answer: one unpaced vision answer through the app (worker and all), then the
        model call it made replayed to the emulator directly for the token boundaries."""
        cfg = self.cfg
        tag = f"bench-{self.run_id}-a2-warmup"
        transport = httpx.AsyncHTTPTransport()
        app = AppClient(self.stack.app_url, transport, self.stack.sessions[0])
        try:
            slot = await open_slot(app, cfg, cfg.vision_model, self.conversation_tag("A2", 0))
            try:
                attachment = await app.upload_image(PNG)
                slot.begin()
                response = await app.post_message(
                    slot.conversation, cfg.prompt(tag, f"[[emu:tokens n={cfg.tokens} ttft=0]]"),
                    [attachment])
                if response.status_code not in (200, 201):
                    raise RuntimeError(f"vision warm-up: POST answered {response.status_code}")
                seq = int(response.json()["assistant"]["seq"])
                await asyncio.wait_for(slot.wait_terminal({seq}), cfg.timeout)
                text, status = delivered_text(slot.end(), seq), slot.terminal[seq]
            finally:
                await slot.close()
        except (TimeoutError, ConnectionError) as exc:
            raise RuntimeError(f"vision warm-up did not end ({type(exc).__name__})") from None
        finally:
            await transport.aclose()
        record = (await self._recorded()).get(tag)
        await self.emu.post("/_emulator/reset", json={})
        if status != "complete" or record is None:
            raise RuntimeError(f"vision warm-up: status {status}, model call seen: "
                               f"{record is not None}")
        return await self._replay_vision(record, text)

    async def _replay_vision(self, record: dict[str, Any], text: str) -> Answer:
        body, path = record.get("json"), str(record.get("path", ""))
        if not isinstance(body, dict):
            raise RuntimeError("vision warm-up: no JSON body recorded")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or "image" not in body or "/ai/run/" not in path:
            raise RuntimeError("vision warm-up: the app sent no image prompt to Cloudflare")
        if re.search(r"<\d+ chars>$", prompt):
            raise RuntimeError("vision warm-up: the recorded prompt is elided")
        res = StreamResult("A2", 0, 0, 0, "bench-replay")
        # The recorded image is elided; any image gives the same answer.
        texts = await run_a0(self.emu, self.stack.emu_url, self.cfg, res, None, 0.0,
                             body={**body, "image": list(PNG)},
                             model=path.split("/ai/run/", 1)[1])
        await self.emu.post("/_emulator/reset", json={})
        if res.error or len(texts) != self.cfg.tokens or "".join(texts) != text:
            raise RuntimeError(f"vision answer replay differs from the app's: {res.error}, "
                               f"{len(texts)} tokens")
        self.vision_answer = make_answer(texts)
        return self.vision_answer

    async def batch(self, arm: str, k: int, rnd: int, slots: list[Slot]) -> Batch:
        answer = self.answer_for(arm)
        results = [StreamResult(arm, k, rnd, i, self.tag(arm, k, rnd, i),
                                slot_tag=slots[i].tag if slots else "") for i in range(k)]
        # A2's images are uploaded before the clock starts, as a person attaches one before
        # pressing Send.
        attachments: list[str | None] = (list(await upload_images(slots)) if arm == "A2"
                                         else [None] * k)
        cpu0 = self._cpu()
        t0 = time.monotonic() + 0.05
        starts = [t0 + self.cfg.spread * i / k for i in range(k)]
        jobs: list[Coroutine[Any, Any, Any]]
        if arm == "A0":
            jobs = [run_a0(self.emu, self.stack.emu_url, self.cfg, res, answer, start)
                    for res, start in zip(results, starts, strict=True)]
        else:
            jobs = [run_app(slot, self.cfg, res, answer, start, attachment)
                    for slot, res, start, attachment
                    in zip(slots, results, starts, attachments, strict=True)]
        await asyncio.gather(*jobs)
        wall = time.monotonic() - t0
        daphne, worker, bench, emulator = (b - a for a, b in zip(cpu0, self._cpu(),
                                                                 strict=True))
        await self._attach_upstream(results)
        batch = Batch(arm, k, rnd, wall, daphne, worker, bench, emulator,
                      *self.stack.app_rss(), results)
        self.batches.append(batch)
        return batch

    async def _recorded(self) -> dict[str, dict[str, Any]]:
        """The emulator's model calls since its last reset, by every tag in their prompt."""
        reply = await self.emu.get("/_emulator/requests", params={"vendor": "cloudflare"})
        calls: dict[str, dict[str, Any]] = {}
        for record in reply.json()["requests"]:
            if record.get("endpoint") == "model":
                for tag in _tags_of(record.get("json")):
                    calls[tag] = record
        return calls

    async def _attach_upstream(self, results: list[StreamResult]) -> None:
        """The emulator's arrival time of each stream's model call, found by the prompt's tag,
        or, for A2, by the tag of the conversation's first message: the vision prompt is the
        whole conversation, which the emulator's recording cuts to its first 200 characters
        once it is long (one stream per conversation per batch, so it is unambiguous)."""
        calls = await self._recorded()
        await self.emu.post("/_emulator/reset", json={})
        for res in results:
            record = calls.get(res.tag) or (calls.get(res.slot_tag) if res.slot_tag else None)
            res.t_upstream = float(record["t"]) if record is not None else None
            if res.t_upstream is None and not res.error:
                res.error = "no_upstream_call"
            elif record is not None and res.arm == "A2" and not record.get("image_bytes") \
                    and not res.error:
                res.error = "no_image"  # the vision answer went out without its image

    async def _renew(self, slots: list[Slot], arm: str, k: int) -> None:
        for index, slot in enumerate(slots):
            if slot.answers >= SLOT_ROUNDS:
                await slot.close()
                slots[index] = await open_slot(slot.app, self.cfg, self.cfg.model_for(arm),
                                               f"{self.conversation_tag(arm, k)}-{index}")

    async def level(self, k: int, arms: tuple[str, ...], log: Callable[[str], None]) -> None:
        limits = httpx.Limits(max_connections=k + 10, max_keepalive_connections=k + 10)
        transport = httpx.AsyncHTTPTransport(limits=limits)  # one pool for the K users
        apps = [AppClient(self.stack.app_url, transport, key)
                for key in self.stack.sessions[:k]]
        slots: dict[str, list[Slot]] = {}
        rounds = self.cfg.rounds(k)
        try:
            for arm in arms[1:]:  # each user has one tab per through-the-app arm
                slots[arm] = await open_slots(apps, self.cfg, self.cfg.model_for(arm),
                                              self.conversation_tag(arm, k))
            for rnd in range(rounds):
                for arm in arms:
                    await self._renew(slots.get(arm, []), arm, k)
                    batch = await self.batch(arm, k, rnd, slots.get(arm, []))
                    errors = sum(1 for s in batch.streams if s.error)
                    log(f"K={k:<4} round {rnd + 1}/{rounds} {arm}: "
                        f"{batch.wall:5.1f}s, {errors} errors")
        finally:
            await asyncio.gather(*(slot.close() for group in slots.values() for slot in group),
                                 return_exceptions=True)
            await transport.aclose()
        self.levels_run.append((k, arms))

    def summaries(self, k: int, arms: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {arm: summarise(self.cfg, arm, [b for b in self.batches
                                               if b.k == k and b.arm == arm],
                               self.answer_for(arm)) for arm in arms}

    async def capacity_search(self, log: Callable[[str], None]) -> None:
        """K = 1, 2, 4, ...: an arm stops at its first failing level; the search stops when
        no arm is left (or at --k-max)."""
        active = list(self.cfg.app_arms)
        result: dict[str, dict[str, Any]] = {
            arm: {"capacity": 0, "first_failing_k": None, "reasons": []} for arm in active}
        levels = []
        for k in self.cfg.ks:
            arms = ("A0", *active)
            await self.level(k, arms, log)
            sums = self.summaries(k, arms)
            a0 = sums["A0"]
            row: dict[str, Any] = {
                "k": k, "rounds": self.cfg.rounds(k), "arms": {},
                "a0": {"rate_p5": a0["delivered_rate_vs_requested"]["p5"],
                       "errors": a0["errors"],
                       "load_core_pct_max_batch": a0["load_core_pct_max_batch"]}}
            for arm in arms[1:]:
                verdict = judge(compare(self.cfg, a0, sums[arm]), sums[arm])
                row["arms"][arm] = verdict
                log(f"K={k:<4} {arm}: {'pass' if verdict['pass'] else 'FAIL'} "
                    + "; ".join(verdict["reasons"]))
                if verdict["pass"]:
                    result[arm]["capacity"] = k
                else:
                    result[arm].update(first_failing_k=k, reasons=verdict["reasons"])
                    active.remove(arm)
            levels.append(row)
            if not active:
                break
        for outcome in result.values():
            outcome["reached_k_max"] = outcome["first_failing_k"] is None
        self.capacity = {"criteria": CAPACITY_CRITERIA, "k_max": self.cfg.k_max,
                         "levels": levels, "result": result}

    async def aclose(self) -> None:
        await self.emu.aclose()


def _tags_of(body: Any) -> list[str]:
    """Tags in a model call: the last user message (messages shape), or the whole prompt (the
    vision shape, the conversation flattened into one prompt)."""
    if not isinstance(body, dict):
        return []
    if isinstance(body.get("prompt"), str):
        return TAG_RE.findall(body["prompt"])
    if not isinstance(body.get("messages"), list):
        return []
    for message in reversed(body["messages"]):
        if isinstance(message, dict) and message.get("role") == "user":
            return TAG_RE.findall(json.dumps(message.get("content"), ensure_ascii=False))
    return []


# --- metrics ------------------------------------------------------------------------------------
def quantile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between order statistics (numpy's default)."""
    clean = sorted(v for v in values if not math.isnan(v))
    if not clean:
        return None
    pos = (len(clean) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(clean) - 1)
    return clean[low] + (clean[high] - clean[low]) * (pos - low)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def _dist_ms(values: Sequence[float]) -> dict[str, float | None]:
    return {"p50": _ms(quantile(values, 0.5)), "p99": _ms(quantile(values, 0.99)),
            "max": _ms(max(values) if values else None), "n": len(values)}


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


def summarise(cfg: Config, arm: str, batches: list[Batch], answer: Answer) -> dict[str, Any]:
    streams = [s for b in batches for s in b.streams]
    good = [s for s in streams if not s.error and s.t_upstream is not None and s.arrivals]
    ttft_send = [s.arrivals[0] - s.t_send for s in good]
    ttft_ts = [s.arrivals[0] - _due(s, cfg, 0) for s in good]
    per_token = [a - _due(s, cfg, i) for s in good for i, a in enumerate(s.arrivals)]
    rates = [(len(s.arrivals) - 1) / (s.arrivals[-1] - s.arrivals[0]) for s in good
             if s.arrivals[-1] > s.arrivals[0]]
    fps = [s.stream_frames / s.frame_span for s in good if s.frame_span]
    tokens = len(answer.tokens) * len(good)
    app_cpu = sum(b.app_cpu for b in batches)
    wall = sum(b.wall for b in batches)
    errors: dict[str, int] = {}
    for s in streams:
        if s.error:
            errors[s.error] = errors.get(s.error, 0) + 1
    rate_p5 = quantile(rates, 0.05)
    out: dict[str, Any] = {
        "arm": arm, "streams": len(streams), "ok": len(good), "errors": sum(errors.values()),
        "error_kinds": errors,
        "ttft_from_send_ms": _dist_ms(ttft_send),
        "ttft_from_first_ts_ms": _dist_ms(ttft_ts),
        "token_delay_ms": _dist_ms(per_token),
        "wire_bytes": sum(s.wire_bytes for s in good),
        "text_bytes": answer.text_bytes * len(good),
        "wire_per_text_byte": _ratio(sum(s.wire_bytes for s in good),
                                     answer.text_bytes * len(good)),
        "payload_bytes": sum(s.payload_bytes for s in good),
        "payload_per_text_byte": _ratio(sum(s.payload_bytes for s in good),
                                        answer.text_bytes * len(good)),
        "ws_compression": cfg.ws_compression,
        "frames_per_s": {"p50": _round(quantile(fps, 0.5)), "max": _round(max(fps, default=0))},
        "delivered_rate": {"p50": _round(quantile(rates, 0.5)), "p5": _round(rate_p5),
                           "min": _round(min(rates, default=0))},
        "delivered_rate_vs_requested": {"p50": _ratio(quantile(rates, 0.5) or 0, cfg.rate),
                                        "p5": _ratio(rate_p5 or 0, cfg.rate),
                                        "min": _ratio(min(rates, default=0), cfg.rate)},
        "tokens_delivered": tokens,
        "app_cpu_s": round(app_cpu, 3),
        "daphne_cpu_s": round(sum(b.daphne_cpu for b in batches), 3),
        "worker_cpu_s": round(sum(b.worker_cpu for b in batches), 3),
        "app_cpu_us_per_token": round(app_cpu / tokens * 1e6, 1) if tokens else None,
        "app_core_pct": round(100 * app_cpu / wall, 1) if wall else None,
        "load_core_pct": _pct(sum(b.bench_cpu + b.emulator_cpu for b in batches), wall),
        "bench_core_pct": _pct(sum(b.bench_cpu for b in batches), wall),
        "emulator_core_pct": _pct(sum(b.emulator_cpu for b in batches), wall),
        "load_core_pct_max_batch": max((_pct(b.bench_cpu + b.emulator_cpu, b.wall) or 0
                                        for b in batches), default=None),
        "app_rss_kib_end": batches[-1].app_rss_kib if batches else None,
        "worker_rss_kib_end": batches[-1].worker_rss_kib if batches else None,
        "wall_s": round(wall, 2),
    }
    if arm == "A0":
        out["arrival_minus_ts_ms"] = _dist_ms([a - t for s in good
                                               for a, t in zip(s.arrivals, s.ts, strict=True)])
        out["emulator_lateness_ms"] = _dist_ms([t - _due(s, cfg, i) for s in good
                                                for i, t in enumerate(s.ts)])
        return out
    for name in ("wire", "payload"):
        kinds: dict[str, int] = {}
        for s in good:
            for kind, size in getattr(s, f"{name}_by_kind").items():
                kinds[kind] = kinds.get(kind, 0) + size
        out[f"{name}_per_text_byte_by_kind"] = {
            kind: _ratio(size, answer.text_bytes * len(good))
            for kind, size in sorted(kinds.items())}
    out["post_response_ms"] = _dist_ms([s.t_response - s.t_send for s in good
                                        if s.t_response is not None])
    out["post_to_upstream_ms"] = _dist_ms([s.t_upstream - s.t_send for s in good
                                           if s.t_upstream is not None])
    return out


def _pct(part: float, whole: float) -> float | None:
    return round(100 * part / whole, 1) if whole else None


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _diff(one: dict[str, Any], a0: dict[str, Any], key: str, q: str,
          minus: float = 0.0) -> float | None:
    mine, zero = one[key][q], a0[key][q]
    return None if mine is None or zero is None else round(mine - minus - zero, 3)


def compare(cfg: Config, a0: dict[str, Any], arm: dict[str, Any]) -> dict[str, Any]:
    """What the app adds: an arm's summary against A0 of the same level."""
    window_ms = float(cfg.window_ms)
    return {
        "added_ttft_ms": {q: _diff(arm, a0, "ttft_from_send_ms", q) for q in ("p50", "p99")},
        "added_ttft_from_first_ts_ms": {q: _diff(arm, a0, "ttft_from_first_ts_ms", q)
                                        for q in ("p50", "p99")},
        "added_token_delay_beyond_window_ms": {
            q: _diff(arm, a0, "token_delay_ms", q, window_ms) for q in ("p50", "p99")},
        "wire_per_text_byte": arm["wire_per_text_byte"],
        "frames_per_s": arm["frames_per_s"],
        "delivered_rate_vs_requested": arm["delivered_rate_vs_requested"],
        "app_cpu_us_per_token": arm["app_cpu_us_per_token"],
        "errors": {"A0": a0["errors"], arm["arm"]: arm["errors"]},
    }


CAPACITY_CRITERIA = {
    "added_ttft_from_first_ts_p99_ms_max": CAPACITY_ADDED_MS,
    "added_token_delay_beyond_window_p99_ms_max": CAPACITY_ADDED_MS,
    "delivered_rate_vs_requested_p5_min": CAPACITY_RATE,
    "failed_streams_max": 0,
    "rate_statistic": "5th percentile over the level's completed streams of each stream's "
                      "(tokens - 1) / (last arrival - first arrival), divided by the requested "
                      "rate",
}


def judge(added: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """One level of the capacity search for one arm: pass, or why not."""
    ttft = added["added_ttft_from_first_ts_ms"]["p99"]
    tok = added["added_token_delay_beyond_window_ms"]["p99"]
    rate = summary["delivered_rate_vs_requested"]["p5"]
    reasons = []
    if ttft is None or ttft > CAPACITY_ADDED_MS:
        reasons.append(f"+TTFT@ts p99 {_num(ttft, '.0f')} ms > {CAPACITY_ADDED_MS:g}")
    if tok is None or tok > CAPACITY_ADDED_MS:
        reasons.append(f"+tok p99 {_num(tok, '.0f')} ms > {CAPACITY_ADDED_MS:g}")
    if not summary["ok"] or rate < CAPACITY_RATE:
        reasons.append(f"rate/R p5 {_num(rate, '.3f')} < {CAPACITY_RATE:g}")
    if summary["errors"]:
        reasons.append(f"{summary['errors']} failed stream(s): "
                       + ", ".join(f"{kind} x{n}" for kind, n in summary["error_kinds"].items()))
    return {"pass": not reasons, "reasons": reasons,
            "added_ttft_from_first_ts_p99_ms": ttft, "added_token_delay_p99_ms": tok,
            "rate_p5": rate if summary["ok"] else None, "errors": summary["errors"],
            "streams": summary["streams"], "app_core_pct": summary["app_core_pct"],
            "app_cpu_us_per_token": summary["app_cpu_us_per_token"],
            "load_core_pct_max_batch": summary["load_core_pct_max_batch"]}


def targets(k: int, added: dict[str, Any]) -> dict[str, bool | None]:
    """docs/performance.md targets that one level can check (None: not applicable)."""

    def at_most(value: float | None, limit: float) -> bool | None:
        return None if value is None else value <= limit

    ttft = added["added_ttft_ms"]
    return {
        "added_ttft_p50_le_5ms_at_k1": at_most(ttft["p50"], 5) if k == 1 else None,
        "added_ttft_p99_le_20ms_at_k1": at_most(ttft["p99"], 20) if k == 1 else None,
        "added_ttft_p99_le_50ms_at_k100": at_most(ttft["p99"], 50) if k >= 100 else None,
        "token_p99_beyond_window_le_25ms_at_k100":
            at_most(added["added_token_delay_beyond_window_ms"]["p99"], 25) if k >= 100
            else None,
        "wire_ratio_le_3": at_most(added["wire_per_text_byte"], 3),
        "frames_per_s_le_20": at_most(added["frames_per_s"]["max"], 20),
        "delivered_rate_ge_95pct": None if added["delivered_rate_vs_requested"]["min"] is None
        else added["delivered_rate_vs_requested"]["min"] >= 0.95,
    }


def stream_rows(cfg: Config, batches: list[Batch]) -> list[dict[str, Any]]:
    rows = []
    for batch in batches:
        for s in batch.streams:
            row: dict[str, Any] = {"arm": s.arm, "k": s.k, "round": s.round, "index": s.index,
                                   "error": s.error, "status": s.status,
                                   "wire_bytes": s.wire_bytes, "frames": s.frames,
                                   "tokens": len(s.arrivals)}
            if s.t_response is not None:
                row["post_ms"] = _ms(s.t_response - s.t_send)
            if s.arrivals and s.t_upstream is not None and not s.error:
                delays = [a - _due(s, cfg, i) for i, a in enumerate(s.arrivals)]
                row.update(ttft_ms=_ms(s.arrivals[0] - s.t_send),
                           ttft_from_first_ts_ms=_ms(s.arrivals[0] - _due(s, cfg, 0)),
                           token_delay_p50_ms=_ms(quantile(delays, 0.5)),
                           token_delay_max_ms=_ms(max(delays)),
                           upstream_after_send_ms=_ms(s.t_upstream - s.t_send))
            rows.append(row)
    return rows


# --- report -------------------------------------------------------------------------------------
def _pair(dist: dict[str, Any], a: str = "p50", b: str = "p99") -> str:
    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.1f}"

    return f"{fmt(dist.get(a))}/{fmt(dist.get(b))}"


def _num(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _arm_rows(report: dict[str, Any]) -> list[str]:
    lines = [
        "Per arm (times in ms; TTFT@send from request/POST sent, TTFT@ts from the first "
        "token's emulator send slot; tok = arrival - send slot, every token)",
        f"{'K':>4} {'arm':<3} {'streams':>7} {'err':>4} {'TTFT@send p50/p99':>18} "
        f"{'TTFT@ts p50/p99':>16} {'tok p50/p99':>14} {'wire B/B':>8} {'frames/s':>8} "
        f"{'rate/R min':>10} {'app us/tok':>10} {'app %':>6} {'load %':>6}",
    ]
    for level in report["levels"]:
        for arm, s in level["arms"].items():
            app = arm != "A0"
            lines.append(
                f"{level['k']:>4} {arm:<3} {s['streams']:>7} {s['errors']:>4} "
                f"{_pair(s['ttft_from_send_ms']):>18} {_pair(s['ttft_from_first_ts_ms']):>16} "
                f"{_pair(s['token_delay_ms']):>14} "
                f"{_num(s['wire_per_text_byte']) if app else '-':>8} "
                f"{_num(s['frames_per_s']['p50'], '.1f'):>8} "
                f"{_num(s['delivered_rate_vs_requested']['min'], '.3f'):>10} "
                f"{_num(s['app_cpu_us_per_token'], '.0f') if app else '-':>10} "
                f"{_num(s['app_core_pct'], '.0f'):>6} {_num(s['load_core_pct'], '.0f'):>6}")
    return lines


def _added_rows(report: dict[str, Any]) -> list[str]:
    lines = [
        "Added by the app (arm - A0 of the same run, ms; token delay minus the window)",
        f"{'K':>4} {'arm':<3} {'+TTFT p50/p99':>16} {'+TTFT@ts p50/p99':>17} "
        f"{'+tok p50/p99':>14} {'POST p50/p99':>14} {'POST->upstream p50/p99':>23} "
        f"{'errors A0/arm':>13}",
    ]
    for level in report["levels"]:
        for arm, added in level["added_by_arm"].items():
            s = level["arms"][arm]
            lines.append(
                f"{level['k']:>4} {arm:<3} {_pair(added['added_ttft_ms']):>16} "
                f"{_pair(added['added_ttft_from_first_ts_ms']):>17} "
                f"{_pair(added['added_token_delay_beyond_window_ms']):>14} "
                f"{_pair(s['post_response_ms']):>14} {_pair(s['post_to_upstream_ms']):>23} "
                f"{added['errors']['A0']:>6}/{added['errors'][arm]:<6}")
    return lines


def _capacity_rows(cfg: Config, capacity: dict[str, Any]) -> list[str]:
    lines = [
        f"Capacity search (K doubling to {cfg.k_max}): a level passes when +TTFT@ts p99 and "
        f"+tok p99 <= {CAPACITY_ADDED_MS:g} ms, p5 of per-stream rate/R >= "
        f"{CAPACITY_RATE:g} and no stream failed",
        f"{'K':>4} {'rounds':>6} {'arm':<3} {'+TTFT@ts p99':>12} {'+tok p99':>9} "
        f"{'rate/R p5':>9} {'err':>4} {'app us/tok':>10} {'app %':>6} {'A0 rate p5':>10} "
        f"{'load %max':>9}  verdict",
    ]
    for level in capacity["levels"]:
        a0 = level["a0"]
        for arm, v in level["arms"].items():
            lines.append(
                f"{level['k']:>4} {level['rounds']:>6} {arm:<3} "
                f"{_num(v['added_ttft_from_first_ts_p99_ms'], '.1f'):>12} "
                f"{_num(v['added_token_delay_p99_ms'], '.1f'):>9} "
                f"{_num(v['rate_p5'], '.3f'):>9} {v['errors']:>4} "
                f"{_num(v['app_cpu_us_per_token'], '.0f'):>10} "
                f"{_num(v['app_core_pct'], '.0f'):>6} {_num(a0['rate_p5'], '.3f'):>10} "
                f"{_num(a0['load_core_pct_max_batch'], '.0f'):>9}  "
                + ("pass" if v["pass"] else "FAIL: " + "; ".join(v["reasons"])))
    for arm, outcome in capacity["result"].items():
        if outcome["reached_k_max"]:
            lines.append(f"Capacity {arm}: >= {outcome['capacity']} (every level up to "
                         f"--k-max passed)")
        else:
            lines.append(f"Capacity {arm}: {outcome['capacity']} (K={outcome['first_failing_k']}"
                         f" failed: {'; '.join(outcome['reasons'])})")
    return lines


def render_table(cfg: Config, report: dict[str, Any]) -> str:
    env = report["environment"]
    stack = ("Redis stack (PostgreSQL, Redis channel layer, Celery worker: "
             f"{cfg.worker_pool} x {cfg.worker_concurrency})" if cfg.redis
             else "embedded stack (SQLite, in-memory channel layer)")
    lines = [
        f"Relay benchmark: {cfg.tokens} tokens at {cfg.rate:g}/s, ttft {cfg.ttft:g}s, "
        + (f"{cfg.repeat} round(s) per K" if not cfg.capacity
           else f"up to {cfg.repeat} round(s) per K") + ", "
        f"starts spread over {cfg.spread:g}s, coalescing window {cfg.window_ms} ms, "
        f"pinned: {env['pinned']}",
        f"Arms {','.join(cfg.arms)} on the {stack}",
        "",
        *_arm_rows(report),
        "",
        *_added_rows(report),
    ]
    if report.get("capacity"):
        lines += ["", *_capacity_rows(cfg, report["capacity"])]
    failed = [f"K={lv['k']} {arm}: {name}" for lv in report["levels"]
              for arm, checks in lv["targets_by_arm"].items()
              for name, ok in checks.items() if ok is False]
    lines += ["", "Targets missed: " + (", ".join(failed) if failed else "none")]
    busy = [f"K={lv['k']} {arm}" for lv in report["levels"] for arm in lv["arms"]
            if (lv["arms"][arm]["load_core_pct_max_batch"] or 0) > 70]
    if busy:
        lines.append("Load side above 70% of its core in: " + ", ".join(busy)
                     + " (the benchmark partly measures itself there)")
    lines.append(f"Machine: {env['cpus']} CPUs, 1-min load average at start/end "
                 f"{env['loadavg_1m_start_end']}")
    app_log = report["app_log"]
    if app_log["errors"] or app_log["warnings"]:
        lines.append(f"App log: {app_log['errors']} error and {app_log['warnings']} warning "
                     f"lines (samples in the JSON)")
    return "\n".join(lines)


def _answer_info(answer: Answer | None) -> dict[str, Any] | None:
    if answer is None:
        return None
    return {"tokens": len(answer.tokens), "text_bytes": answer.text_bytes,
            "text_u16": answer.ends_u16[-1], "text_head": answer.text[:48]}


def build_report(cfg: Config, bench: Bench, stack: Stack, started: str, wall: float,
                 loadavg: tuple[float, ...]) -> dict[str, Any]:
    levels = []
    for k, arms in bench.levels_run:
        sums = bench.summaries(k, arms)
        added = {arm: compare(cfg, sums["A0"], sums[arm]) for arm in arms[1:]}
        checks = {arm: targets(k, one) for arm, one in added.items()}
        first = arms[1]  # A1 when it ran: `added` and `targets` keep their earlier meaning
        levels.append({"k": k, "rounds": cfg.rounds(k), "arms": sums,
                       "added": added[first], "targets": checks[first],
                       "added_by_arm": added, "targets_by_arm": checks,
                       "batches": [{"arm": b.arm, "round": b.round, "wall_s": round(b.wall, 3),
                                    "app_cpu_s": round(b.app_cpu, 3),
                                    "daphne_cpu_s": round(b.daphne_cpu, 3),
                                    "worker_cpu_s": round(b.worker_cpu, 3),
                                    "bench_cpu_s": round(b.bench_cpu, 3),
                                    "emulator_cpu_s": round(b.emulator_cpu, 3),
                                    "app_rss_kib": b.app_rss_kib,
                                    "worker_rss_kib": b.worker_rss_kib}
                                   for b in bench.batches if b.k == k]})
    config = {key: (str(value) if isinstance(value, Path) else value)
              for key, value in asdict(cfg).items()}
    report: dict[str, Any] = {
        "benchmark": "relay", "started": started, "wall_s": round(wall, 1), "config": config,
        "answer": _answer_info(bench.answer),
        "answer_vision": _answer_info(bench.vision_answer),
        "environment": {"cpus": os.cpu_count(), "pinned": stack.pinned, "stack": cfg.stack,
                        "worker": ({"pool": cfg.worker_pool,
                                    "concurrency": cfg.worker_concurrency}
                                   if cfg.worker_concurrency else None),
                        "python": platform.python_version(), "httpx": httpx.__version__,
                        "websockets": websockets.__version__, "platform": platform.platform(),
                        # Other processes on the machine skew a run: compare with `cpus`.
                        "loadavg_1m_start_end": [round(loadavg[0], 2),
                                                 round(os.getloadavg()[0], 2)]},
        "levels": levels,
        "capacity": bench.capacity,
        "app_log": stack.app_log_summary(),
        "streams": stream_rows(cfg, bench.batches),
    }
    return report


# --- main ---------------------------------------------------------------------------------------
async def measure(cfg: Config, stack: Stack, log: Callable[[str], None]) -> Bench:
    bench = Bench(cfg, stack)
    try:
        answer = await bench.learn_answer()
        log(f"answer: {len(answer.tokens)} tokens, {answer.text_bytes} bytes")
        if "A2" in cfg.arms:
            vision = await bench.learn_vision_answer()
            log(f"vision answer: {len(vision.tokens)} tokens, {vision.text_bytes} bytes")
        if cfg.capacity:
            await bench.capacity_search(log)
        else:
            for k in cfg.ks:
                await bench.level(k, cfg.arms, log)
    finally:
        await bench.aclose()
    return bench


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _raise_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # run the `finally` that stops the child processes


def run_on_embedded_stack(name: str, json_path: Path | None, no_pin: bool,
                          measure: Callable[[Stack], Coroutine[Any, Any, dict[str, Any]]]
                          ) -> tuple[dict[str, Any], Path] | None:
    """For the small benchmarks beside this one (connections.py, wire.py): start the embedded
    stack (emulator + one daphne, SQLite, one signed-in user), run `measure` on it, stop it,
    write its result to `json_path` (default `bench/results/<name>-<UTC time>.json`). The
    result and its path, or None when the stack failed (its logs' tails on stderr)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = (json_path or RESULTS / f"{name}-{stamp}.json").resolve()
    cfg = parse_args(["--arms", "A0,A1", "--stack", "embedded", "--k", "1",
                      "--var-dir", str(RESULTS / f"var-{name}"), "--json", str(out)]
                     + (["--no-pin"] if no_pin else []))
    stack = Stack(cfg)
    try:
        stack.start()
        result = asyncio.run(measure(stack))
        result["app_log"] = stack.app_log_summary()
    except Exception as exc:  # a failed stack: show its logs
        print(f"{name} benchmark failed: {type(exc).__name__}: {exc}\n{stack.log_tail()}",
              file=sys.stderr)
        return None
    finally:
        stack.stop()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"JSON: {out}", file=sys.stderr)
    return result, out


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv, default_arms=ARMS)
    signal.signal(signal.SIGTERM, _raise_exit)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    loadavg = os.getloadavg()
    stack = Stack(cfg)
    try:
        _stderr(f"starting emulator :{stack.emu_port} and app :{stack.app_port} "
                f"({cfg.stack} stack, var dir {cfg.var_dir})")
        stack.start()
        bench = asyncio.run(measure(cfg, stack, _stderr))
    except (RuntimeError, OSError, TimeoutError, httpx.HTTPError, InvalidHandshake,
            ConnectionClosed) as exc:
        stack.stop()
        _stderr(f"relay benchmark failed: {type(exc).__name__}: {exc}")
        _stderr(stack.log_tail())
        return 1
    finally:
        stack.stop()
    report = build_report(cfg, bench, stack, started, time.monotonic() - t0, loadavg)
    cfg.json_path.parent.mkdir(parents=True, exist_ok=True)
    cfg.json_path.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(render_table(cfg, report))
    print(f"\nJSON: {cfg.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
