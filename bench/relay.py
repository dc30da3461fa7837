"""Relay benchmark (issue 4): what the app adds on top of the provider's own stream.

Arms, interleaved in one run (A0 A1 A0 A1 ...) at each concurrency K:

- A0: this client reads the emulator's Cloudflare SSE stream directly (httpx), same prompt,
  same pace. It is the floor: what a perfect relay would deliver.
- A1: through the app: POST /c/<id>/messages/ on a conversation whose websocket is already
  open (as a browser tab does), then the answer arrives as websocket frames.

The script starts its own emulator and daphne processes on free 127.0.0.1 ports (app pinned to
core 0, emulator and this load generator to core 1 when `taskset` and two cores exist), on a
separate VAR_DIR and SQLite database, waits until both answer, runs, and stops them. Every
number is reported against A0 of the same run. Method and metrics: bench/README.md.

    .venv/bin/python bench/relay.py                      # K=1,10,100, 500 tokens at 50/s
    .venv/bin/python bench/relay.py --quick              # under a minute
    .venv/bin/python bench/relay.py --k 1 --tokens 20 --repeat 200   # >= 200 TTFT samples
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Origin

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# The emulator's default (fake) credentials, see providers/emulators/README.md.
CF_ACCOUNT = "0123456789abcdef0123456789abcdef"
CF_TOKEN = "cf-emu-token-0001"
CF_MODEL = "@cf/meta/llama-3.2-3b-instruct"
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
    "DEBUG", "CLOUDFLARE_BASE_URL", "DASHSCOPE_BASE_URL", "QIANFAN_BASE_URL", *EMULATOR_ENV,
)
# The emulator echoes the first 40 characters of the prompt: a longer fixed prefix makes every
# answer (A0 and A1, every stream) the same text, while the tag after it identifies the stream
# in the emulator's recorded requests.
PROMPT_PREFIX = "Relay benchmark prompt, identical across all streams:"
TAG_RE = re.compile(r"#(bench-[0-9a-z-]+)")
TERMINAL = frozenset({"complete", "failed", "stopped", "interrupted"})
ACK_EVERY = 32 * 1024  # what static/js/chat.js does (the protocol asks for <= 128 KB)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CSRF_CHARS = string.ascii_letters + string.digits

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
    ks: tuple[int, ...]
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

    @property
    def window(self) -> float:
        return self.window_ms / 1000

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


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(prog="bench/relay.py", description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=_ks, help="concurrency levels (default 1,10,100; quick 1,10)")
    parser.add_argument("--tokens", type=int, help="answer length (default 500; quick 60)")
    parser.add_argument("--rate", type=float, help="tokens per second (default 50; quick 100)")
    parser.add_argument("--ttft", type=float, help="emulator TTFT, s (default 0.2; quick 0.1)")
    parser.add_argument("--repeat", type=int, help="A0/A1 rounds per K (default 3; quick 2)")
    parser.add_argument("--spread", type=float,
                        help="start the K streams evenly over this many seconds, not as one "
                             "burst (default 1.0; quick 0.2; 0 = burst)")
    parser.add_argument("--window-ms", type=int, default=50,
                        help="the app's coalescing window (sets STREAM_COALESCE_MS; default 50)")
    parser.add_argument("--timeout", type=float,
                        help="per-stream limit, s (default: ttft + tokens/rate + spread + 30)")
    parser.add_argument("--model", default="llama-3.2-3b", help="model slug (a Cloudflare one)")
    parser.add_argument("--a0-client", choices=("httpx", "raw"), default="httpx",
                        help="A0's HTTP client: httpx (default) or a bare asyncio reader that "
                             "keeps the load core free at high K")
    parser.add_argument("--quick", action="store_true", help="small defaults: < 60 s in all")
    parser.add_argument("--json", type=Path, help="output file (default "
                        "bench/results/relay-<timestamp>.json)")
    parser.add_argument("--var-dir", type=Path, default=RESULTS / "var",
                        help="VAR_DIR of the app under test (its SQLite file is recreated)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
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
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Config(
        ks=pick(args.k, (1, 10, 100), (1, 10)), tokens=tokens, rate=rate, ttft=ttft,
        repeat=repeat, spread=spread, window_ms=args.window_ms,
        timeout=args.timeout or ttft + tokens / rate + spread + 30.0, model=args.model,
        a0_client=args.a0_client, quick=quick,
        json_path=(args.json or RESULTS / f"relay-{stamp}.json").resolve(),
        var_dir=args.var_dir.resolve(), pin=not args.no_pin,
    )


# --- processes ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = data[data.rindex(")") + 2:].split()  # the name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


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


class Stack:
    """The emulator and the app under test: own ports, own database, own logs."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pinned = cfg.pin and can_pin()
        self.emu_port = free_port()
        self.app_port = free_port()
        self.emu_url = f"http://127.0.0.1:{self.emu_port}"
        self.app_url = f"http://127.0.0.1:{self.app_port}"
        self.sessions: list[str] = []  # one signed-in user per concurrent stream
        self.db_path = cfg.var_dir / "bench.sqlite3"
        self.logs = {name: cfg.var_dir / f"{name}.log" for name in ("emulator", "setup", "app")}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in STRIPPED_ENV}
        env.update(EMULATOR_ENV)
        env.update({
            "VAR_DIR": str(self.cfg.var_dir), "DATABASE_URL": f"sqlite:///{self.db_path}",
            "DEBUG": "0", "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1",
            "STREAM_COALESCE_MS": str(self.cfg.window_ms),
            # Per-user limits stay out of the way (each user has one stream at a time, but a
            # long --repeat posts more than the default 20 messages a minute).
            "RATE_LIMIT_PER_MINUTE": "100000", "MAX_CONCURRENT_ANSWERS": "1000",
            "CLOUDFLARE_BASE_URL": f"{self.emu_url}/client/v4",
            "DASHSCOPE_BASE_URL": f"{self.emu_url}/api/v1", "QIANFAN_BASE_URL": self.emu_url,
        })
        return env

    def _pin(self, core: int) -> list[str]:
        return ["taskset", "-c", str(core)] if self.pinned else []

    def _spawn(self, name: str, argv: list[str], core: int) -> subprocess.Popen[bytes]:
        log = self.logs[name].open("wb")
        try:
            proc = subprocess.Popen([*self._pin(core), *argv], cwd=ROOT, env=self.env(),
                                    stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()  # the child holds its own descriptor
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        self.cfg.var_dir.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):  # a fresh database every run
            Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
        emulator = self._spawn("emulator", [sys.executable, "-m", "providers.emulators",
                                            "--port", str(self.emu_port)], core=1)
        self._setup_database()
        _wait_healthy(f"{self.emu_url}/_emulator/health", emulator, self.logs["emulator"], 30)
        app = self._spawn("app", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p",
                                  str(self.app_port), "chatsite.asgi:application"], core=0)
        _wait_healthy(f"{self.app_url}/healthz", app, self.logs["app"], 60)
        if self.pinned:
            os.sched_setaffinity(0, {1})  # the load generator shares core 1 with the emulator

    def _setup_database(self) -> None:
        sessions = self.cfg.var_dir / "sessions.json"
        env = {**self.env(), "BENCH_USERS": str(max(self.cfg.ks)),
               "BENCH_SESSIONS": str(sessions)}
        with self.logs["setup"].open("wb") as log:
            done = subprocess.run([sys.executable, "manage.py", "shell", "-c", SETUP_CODE],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=300, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"database setup failed; see {self.logs['setup']}")
        self.sessions = json.loads(sessions.read_text())
        sessions.unlink()

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for path in self.logs.values():
            with contextlib.suppress(OSError):
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(parts)

    def app_log_summary(self) -> dict[str, Any]:
        """Error and warning lines the app logged (the benchmark treats them as findings)."""
        try:
            lines = self.logs["app"].read_text(errors="replace").splitlines()
        except OSError:
            return {"errors": 0, "warnings": 0, "tracebacks": 0, "samples": []}
        errors = [line for line in lines if " ERROR " in line or " CRITICAL " in line]
        warnings = [line for line in lines if " WARNING " in line]
        samples: list[str] = []
        for line in errors + warnings:
            if line[24:] not in {s[24:] for s in samples} and len(samples) < 8:
                samples.append(line[:300])
        return {"errors": len(errors), "warnings": len(warnings),
                "tracebacks": sum("Traceback" in line for line in lines), "samples": samples}


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
    t_send: float = 0.0  # request (A0) or POST (A1) sent
    t_response: float | None = None  # A1: the POST answered
    t_upstream: float | None = None  # the emulator received the model call (its recording)
    arrivals: list[float] = field(default_factory=list)  # per token: when it was readable here
    ts: list[float] = field(default_factory=list)  # A0: the emulator's "ts" per token
    wire_bytes: int = 0  # A1: websocket payload bytes; A0: SSE body bytes
    frames: int = 0  # A1: websocket frames; A0: HTTP chunks
    wire_by_kind: dict[str, int] = field(default_factory=dict)  # A1: "d", "b", "other"
    stream_frames: int = 0  # frames from the first token to the end of the answer
    frame_span: float | None = None  # first to last frame carrying the answer, s
    status: str = ""  # A1: the final state


def _due(res: StreamResult, cfg: Config, index: int) -> float:
    """The emulator's schedule for token `index`: arrival + ttft + index/rate (its Pacer)."""
    assert res.t_upstream is not None
    return res.t_upstream + cfg.ttft + index / cfg.rate


async def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def _sse_events(buffer: bytearray) -> list[bytes]:
    """Complete events at the front of `buffer` (removed from it)."""
    events = []
    while (end := buffer.find(b"\n\n")) >= 0:
        events.append(bytes(buffer[:end]))
        del buffer[:end + 2]
    return events


class StatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


async def _httpx_chunks(http: httpx.AsyncClient, url: str, body: bytes,
                        headers: dict[str, str]) -> AsyncGenerator[bytes, None]:
    async with http.stream("POST", url, content=body, headers=headers) as response:
        if response.status_code != 200:
            raise StatusError(response.status_code)
        async for chunk in response.aiter_raw():
            yield chunk


async def _raw_chunks(url: str, body: bytes,
                      headers: dict[str, str]) -> AsyncGenerator[bytes, None]:
    """The same request over a bare asyncio connection: an HTTP/1.1 reader costing a fraction
    of httpx's CPU per chunk, so the load core stays free at high K (--a0-client raw)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    try:
        lines = [f"POST {parts.path} HTTP/1.1", f"Host: {host}:{port}",
                 "Content-Type: application/json", f"Content-Length: {len(body)}",
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
                 answer: Answer | None, start_at: float, magic: str | None = None) -> list[str]:
    """Read the emulator's stream directly; returns the token texts."""
    await _sleep_until(start_at)
    url = f"{emu_url}/client/v4/accounts/{CF_ACCOUNT}/ai/run/{CF_MODEL}"
    body = json.dumps({"messages": [{"role": "user", "content": cfg.prompt(res.tag, magic)}],
                       "stream": True, "max_tokens": max(1024, cfg.tokens)}).encode()
    headers = {"Authorization": f"Bearer {CF_TOKEN}", "Accept": "text/event-stream",
               "Content-Type": "application/json"}
    texts: list[str] = []
    done = False
    res.t_send = time.monotonic()
    source = (_raw_chunks(url, body, headers) if cfg.a0_client == "raw"
              else _httpx_chunks(http, url, body, headers))
    try:
        async with asyncio.timeout(cfg.timeout), contextlib.aclosing(source) as chunks:
            buffer = bytearray()
            async for chunk in chunks:
                now = time.monotonic()
                res.wire_bytes += len(chunk)
                res.frames += 1
                buffer += chunk
                for event in _sse_events(buffer):
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


def _a0_event(event: bytes, now: float, res: StreamResult, texts: list[str]) -> bool:
    """Record one SSE event; True at [DONE]."""
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return True
        payload = json.loads(data)
        text = payload.get("response")
        if isinstance(text, str) and text:
            texts.append(text)
            res.arrivals.append(now)
            res.ts.append(float(payload.get("ts", math.nan)))
    return False


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

    async def post_message(self, conversation: str, text: str) -> httpx.Response:
        return await self.http.post(f"/c/{conversation}/messages/",
                                    headers=self._headers(Accept="application/json"),
                                    data={"text": text, "client_id": str(uuid.uuid4())})


Frame = tuple[float, int, Any]  # arrival time, payload bytes, decoded JSON


class Slot:
    """One conversation with its websocket open, like a browser tab showing it."""

    def __init__(self, app: AppClient, conversation: str, ws: ClientConnection) -> None:
        self.app = app
        self.conversation = conversation
        self.ws = ws
        self.received = 0
        self.acked = 0
        self.recording = False
        self.log: list[Frame] = []
        self.terminal: dict[int, str] = {}
        self.active: set[int] = set()
        self.hello = asyncio.Event()
        self.changed = asyncio.Event()
        self.closed = False
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, app: AppClient, conversation: str) -> Slot:
        base = app.base_url.replace("http://", "ws://", 1)
        ws = await connect(f"{base}/ws/c/{conversation}/", origin=Origin(app.base_url),
                           additional_headers={"Cookie": app.cookie},
                           compression=None, max_size=2**24, ping_interval=None,
                           open_timeout=60)
        return cls(app, conversation, ws)

    async def _read(self) -> None:
        try:
            while True:
                raw = await self.ws.recv(decode=False)
                now = time.monotonic()
                size = len(raw)
                self.received += size
                frame = json.loads(raw)
                if self.recording:
                    self.log.append((now, size, frame))
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


async def open_slots(apps: list[AppClient], cfg: Config) -> list[Slot]:
    """One conversation per user, its short first answer finished and its websocket open."""
    gate = asyncio.Semaphore(8)

    async def one(index: int, app: AppClient) -> Slot:
        async with gate:
            text = cfg.prompt(f"bench-setup-{len(apps)}-{index}", "[[emu:tokens n=12 ttft=0]]")
            conversation = await app.new_conversation(cfg.model, text)
            slot = await Slot.open(app, conversation)
        try:
            await asyncio.wait_for(slot.hello.wait(), 60)
            await asyncio.wait_for(slot.wait_terminal(slot.active), 60)
        except (TimeoutError, ConnectionError) as exc:
            raise RuntimeError(f"conversation {conversation}: the first answer did not end "
                               f"({type(exc).__name__})") from None
        return slot

    return list(await asyncio.gather(*(one(i, app) for i, app in enumerate(apps))))


async def run_a1(slot: Slot, cfg: Config, res: StreamResult, answer: Answer,
                 start_at: float) -> None:
    await _sleep_until(start_at)
    slot.begin()
    seq: int | None = None
    res.t_send = time.monotonic()
    try:
        async with asyncio.timeout(cfg.timeout):
            response = await slot.app.post_message(slot.conversation, cfg.prompt(res.tag))
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
    if seq is not None:
        _analyse_a1(res, frames, seq, answer)


def _analyse_a1(res: StreamResult, frames: list[Frame], seq: int, answer: Answer) -> None:
    """Deltas -> per-token arrival; bytes and frames; text and offsets checked."""
    res.wire_bytes = sum(size for _t, size, _f in frames)
    res.frames = len(frames)
    pieces: list[str] = []
    ends: list[tuple[float, int]] = []
    expected = 0
    for now, size, frame in frames:
        kind = frame[0] if isinstance(frame, list) and frame[0] in ("d", "b") else "other"
        res.wire_by_kind[kind] = res.wire_by_kind.get(kind, 0) + size
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
    app_cpu: float
    bench_cpu: float  # this process (the load generator)
    emulator_cpu: float
    app_rss_kib: int | None
    streams: list[StreamResult]


class Bench:
    def __init__(self, cfg: Config, stack: Stack) -> None:
        self.cfg = cfg
        self.stack = stack
        self.run_id = secrets.token_hex(3)
        self.answer: Answer | None = None
        self.batches: list[Batch] = []
        self.emu = httpx.AsyncClient(base_url=stack.emu_url, timeout=60.0,
                                     limits=httpx.Limits(max_connections=max(cfg.ks) + 10))

    def tag(self, arm: str, k: int, rnd: int, index: int) -> str:
        return f"bench-{self.run_id}-{arm.lower()}-{k}-{rnd}-{index}"

    def _cpu(self) -> tuple[float, float, float]:
        return (cpu_seconds(self.stack.pid("app")), cpu_seconds(os.getpid()),
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

    async def batch(self, arm: str, k: int, rnd: int, slots: list[Slot]) -> Batch:
        assert self.answer is not None
        answer = self.answer
        results = [StreamResult(arm, k, rnd, i, self.tag(arm, k, rnd, i)) for i in range(k)]
        cpu0 = self._cpu()
        t0 = time.monotonic() + 0.05
        starts = [t0 + self.cfg.spread * i / k for i in range(k)]
        jobs: list[Coroutine[Any, Any, Any]]
        if arm == "A0":
            jobs = [run_a0(self.emu, self.stack.emu_url, self.cfg, res, answer, start)
                    for res, start in zip(results, starts, strict=True)]
        else:
            jobs = [run_a1(slot, self.cfg, res, answer, start)
                    for slot, res, start in zip(slots, results, starts, strict=True)]
        await asyncio.gather(*jobs)
        wall = time.monotonic() - t0
        app_cpu, bench_cpu, emulator_cpu = (b - a for a, b in zip(cpu0, self._cpu(),
                                                                  strict=True))
        await self._attach_upstream(results)
        batch = Batch(arm, k, rnd, wall, app_cpu, bench_cpu, emulator_cpu,
                      rss_kib(self.stack.pid("app")), results)
        self.batches.append(batch)
        return batch

    async def _attach_upstream(self, results: list[StreamResult]) -> None:
        """The emulator's arrival time of each stream's model call, found by the prompt's tag."""
        reply = await self.emu.get("/_emulator/requests", params={"vendor": "cloudflare"})
        arrivals: dict[str, float] = {}
        for record in reply.json()["requests"]:
            tag = _tag_of(record.get("json"))
            if record.get("endpoint") == "model" and tag:
                arrivals[tag] = float(record["t"])
        await self.emu.post("/_emulator/reset", json={})
        for res in results:
            res.t_upstream = arrivals.get(res.tag)
            if res.t_upstream is None and not res.error:
                res.error = "no_upstream_call"

    async def level(self, k: int, log: Callable[[str], None]) -> None:
        limits = httpx.Limits(max_connections=k + 10, max_keepalive_connections=k + 10)
        transport = httpx.AsyncHTTPTransport(limits=limits)  # one pool for the K users
        apps = [AppClient(self.stack.app_url, transport, key)
                for key in self.stack.sessions[:k]]
        slots: list[Slot] = []
        try:
            slots = await open_slots(apps, self.cfg)
            for rnd in range(self.cfg.repeat):
                for arm in ("A0", "A1"):
                    batch = await self.batch(arm, k, rnd, slots)
                    errors = sum(1 for s in batch.streams if s.error)
                    log(f"K={k:<4} round {rnd + 1}/{self.cfg.repeat} {arm}: "
                        f"{batch.wall:5.1f}s, {errors} errors")
        finally:
            await asyncio.gather(*(slot.close() for slot in slots), return_exceptions=True)
            await transport.aclose()

    async def aclose(self) -> None:
        await self.emu.aclose()


def _tag_of(body: Any) -> str | None:
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return None
    for message in reversed(body["messages"]):
        if isinstance(message, dict) and message.get("role") == "user":
            match = TAG_RE.search(json.dumps(message.get("content"), ensure_ascii=False))
            return match.group(1) if match else None
    return None


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
    out: dict[str, Any] = {
        "streams": len(streams), "ok": len(good), "errors": sum(errors.values()),
        "error_kinds": errors,
        "ttft_from_send_ms": _dist_ms(ttft_send),
        "ttft_from_first_ts_ms": _dist_ms(ttft_ts),
        "token_delay_ms": _dist_ms(per_token),
        "wire_bytes": sum(s.wire_bytes for s in good),
        "text_bytes": answer.text_bytes * len(good),
        "wire_per_text_byte": _ratio(sum(s.wire_bytes for s in good),
                                     answer.text_bytes * len(good)),
        "frames_per_s": {"p50": _round(quantile(fps, 0.5)), "max": _round(max(fps, default=0))},
        "delivered_rate": {"p50": _round(quantile(rates, 0.5)), "min": _round(min(rates,
                                                                               default=0))},
        "delivered_rate_vs_requested": {"p50": _ratio(quantile(rates, 0.5) or 0, cfg.rate),
                                        "min": _ratio(min(rates, default=0), cfg.rate)},
        "tokens_delivered": tokens,
        "app_cpu_s": round(app_cpu, 3),
        "app_cpu_us_per_token": round(app_cpu / tokens * 1e6, 1) if tokens else None,
        "app_core_pct": round(100 * app_cpu / wall, 1) if wall else None,
        "load_core_pct": _pct(sum(b.bench_cpu + b.emulator_cpu for b in batches), wall),
        "bench_core_pct": _pct(sum(b.bench_cpu for b in batches), wall),
        "emulator_core_pct": _pct(sum(b.emulator_cpu for b in batches), wall),
        "load_core_pct_max_batch": max((_pct(b.bench_cpu + b.emulator_cpu, b.wall) or 0
                                        for b in batches), default=None),
        "app_rss_kib_end": batches[-1].app_rss_kib if batches else None,
        "wall_s": round(wall, 2),
    }
    if arm == "A1":
        kinds: dict[str, int] = {}
        for s in good:
            for kind, size in s.wire_by_kind.items():
                kinds[kind] = kinds.get(kind, 0) + size
        out["wire_per_text_byte_by_kind"] = {kind: _ratio(size, answer.text_bytes * len(good))
                                             for kind, size in sorted(kinds.items())}
    if arm == "A0":
        out["arrival_minus_ts_ms"] = _dist_ms([a - t for s in good
                                               for a, t in zip(s.arrivals, s.ts, strict=True)])
        out["emulator_lateness_ms"] = _dist_ms([t - _due(s, cfg, i) for s in good
                                                for i, t in enumerate(s.ts)])
    else:
        out["post_response_ms"] = _dist_ms([s.t_response - s.t_send for s in good
                                            if s.t_response is not None])
        out["post_to_upstream_ms"] = _dist_ms([s.t_upstream - s.t_send for s in good
                                               if s.t_upstream is not None])
    return out


def _pct(part: float, whole: float) -> float | None:
    return round(100 * part / whole, 1) if whole else None


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _diff(a1: dict[str, Any], a0: dict[str, Any], key: str, q: str,
          minus: float = 0.0) -> float | None:
    one, zero = a1[key][q], a0[key][q]
    return None if one is None or zero is None else round(one - minus - zero, 3)


def compare(cfg: Config, a0: dict[str, Any], a1: dict[str, Any]) -> dict[str, Any]:
    window_ms = float(cfg.window_ms)
    return {
        "added_ttft_ms": {q: _diff(a1, a0, "ttft_from_send_ms", q) for q in ("p50", "p99")},
        "added_ttft_from_first_ts_ms": {q: _diff(a1, a0, "ttft_from_first_ts_ms", q)
                                        for q in ("p50", "p99")},
        "added_token_delay_beyond_window_ms": {
            q: _diff(a1, a0, "token_delay_ms", q, window_ms) for q in ("p50", "p99")},
        "wire_per_text_byte": a1["wire_per_text_byte"],
        "frames_per_s": a1["frames_per_s"],
        "delivered_rate_vs_requested": a1["delivered_rate_vs_requested"],
        "app_cpu_us_per_token": a1["app_cpu_us_per_token"],
        "errors": {"A0": a0["errors"], "A1": a1["errors"]},
    }


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


def render_table(cfg: Config, report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"Relay benchmark: {cfg.tokens} tokens at {cfg.rate:g}/s, ttft {cfg.ttft:g}s, "
        f"{cfg.repeat} round(s) per K, starts spread over {cfg.spread:g}s, "
        f"coalescing window {cfg.window_ms} ms, pinned: {env['pinned']}",
        "",
        "Per arm (times in ms; TTFT@send from request/POST sent, TTFT@ts from the first "
        "token's emulator send slot; tok = arrival - send slot, every token)",
        f"{'K':>4} {'arm':<3} {'streams':>7} {'err':>4} {'TTFT@send p50/p99':>18} "
        f"{'TTFT@ts p50/p99':>16} {'tok p50/p99':>14} {'wire B/B':>8} {'frames/s':>8} "
        f"{'rate/R min':>10} {'app us/tok':>10} {'app %':>6} {'load %':>6}",
    ]
    for level in report["levels"]:
        for arm in ("A0", "A1"):
            s = level["arms"][arm]
            lines.append(
                f"{level['k']:>4} {arm:<3} {s['streams']:>7} {s['errors']:>4} "
                f"{_pair(s['ttft_from_send_ms']):>18} {_pair(s['ttft_from_first_ts_ms']):>16} "
                f"{_pair(s['token_delay_ms']):>14} "
                f"{_num(s['wire_per_text_byte']) if arm == 'A1' else '-':>8} "
                f"{_num(s['frames_per_s']['p50'], '.1f'):>8} "
                f"{_num(s['delivered_rate_vs_requested']['min'], '.3f'):>10} "
                f"{_num(s['app_cpu_us_per_token'], '.0f') if arm == 'A1' else '-':>10} "
                f"{_num(s['app_core_pct'], '.0f'):>6} {_num(s['load_core_pct'], '.0f'):>6}")
    lines += [
        "",
        "Added by the app (A1 - A0 of the same run, ms; token delay minus the window)",
        f"{'K':>4} {'+TTFT p50/p99':>16} {'+TTFT@ts p50/p99':>17} {'+tok p50/p99':>14} "
        f"{'POST p50/p99':>14} {'POST->upstream p50/p99':>23} {'errors A0/A1':>13}",
    ]
    for level in report["levels"]:
        added, a1 = level["added"], level["arms"]["A1"]
        lines.append(
            f"{level['k']:>4} {_pair(added['added_ttft_ms']):>16} "
            f"{_pair(added['added_ttft_from_first_ts_ms']):>17} "
            f"{_pair(added['added_token_delay_beyond_window_ms']):>14} "
            f"{_pair(a1['post_response_ms']):>14} {_pair(a1['post_to_upstream_ms']):>23} "
            f"{added['errors']['A0']:>6}/{added['errors']['A1']:<6}")
    failed = [f"K={lv['k']}: {name}" for lv in report["levels"]
              for name, ok in lv["targets"].items() if ok is False]
    lines += ["", "Targets missed: " + (", ".join(failed) if failed else "none")]
    busy = [f"K={lv['k']} {arm}" for lv in report["levels"] for arm in ("A0", "A1")
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


def build_report(cfg: Config, bench: Bench, stack: Stack, started: str, wall: float,
                 loadavg: tuple[float, ...]) -> dict[str, Any]:
    assert bench.answer is not None
    levels = []
    for k in cfg.ks:
        arms = {arm: summarise(cfg, arm, [b for b in bench.batches if b.k == k and b.arm == arm],
                               bench.answer) for arm in ("A0", "A1")}
        added = compare(cfg, arms["A0"], arms["A1"])
        levels.append({"k": k, "arms": arms, "added": added, "targets": targets(k, added),
                       "batches": [{"arm": b.arm, "round": b.round, "wall_s": round(b.wall, 3),
                                    "app_cpu_s": round(b.app_cpu, 3),
                                    "bench_cpu_s": round(b.bench_cpu, 3),
                                    "emulator_cpu_s": round(b.emulator_cpu, 3),
                                    "app_rss_kib": b.app_rss_kib}
                                   for b in bench.batches if b.k == k]})
    config = {key: (str(value) if isinstance(value, Path) else value)
              for key, value in asdict(cfg).items()}
    return {
        "benchmark": "relay", "started": started, "wall_s": round(wall, 1), "config": config,
        "answer": {"tokens": len(bench.answer.tokens), "text_bytes": bench.answer.text_bytes,
                   "text_u16": bench.answer.ends_u16[-1]},
        "environment": {"cpus": os.cpu_count(), "pinned": stack.pinned,
                        "python": platform.python_version(), "httpx": httpx.__version__,
                        "websockets": websockets.__version__, "platform": platform.platform(),
                        # Other processes on the machine skew a run: compare with `cpus`.
                        "loadavg_1m_start_end": [round(loadavg[0], 2),
                                                 round(os.getloadavg()[0], 2)]},
        "levels": levels,
        "app_log": stack.app_log_summary(),
        "streams": stream_rows(cfg, bench.batches),
    }


# --- main ---------------------------------------------------------------------------------------
async def measure(cfg: Config, stack: Stack, log: Callable[[str], None]) -> Bench:
    bench = Bench(cfg, stack)
    try:
        answer = await bench.learn_answer()
        log(f"answer: {len(answer.tokens)} tokens, {answer.text_bytes} bytes")
        for k in cfg.ks:
            await bench.level(k, log)
    finally:
        await bench.aclose()
    return bench


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _raise_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # run the `finally` that stops the child processes


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_exit)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    loadavg = os.getloadavg()
    stack = Stack(cfg)
    try:
        _stderr(f"starting emulator :{stack.emu_port} and app :{stack.app_port} "
                f"(var dir {cfg.var_dir})")
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
