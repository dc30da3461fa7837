"""Bare relay: the baseline of "CPU per relayed token" (docs/performance.md).

The same Cloudflare SSE stream the app relays, relayed by a plain `websockets` server with no
Django, Channels, database or Markdown: read the provider's stream, coalesce deltas over a 100 ms
window (like the app's STREAM_COALESCE_MS), send `["d", seq, offset, text]` frames and a final
`{"type": "state", "status": "complete"}`. The app's CPU per token must stay within 3x of this.

    .venv/bin/python bench/bare_relay.py --k 1,10,100 --tokens 500 --rate 50
    .venv/bin/python bench/bare_relay.py --quick                   # under 30 s
    .venv/bin/python bench/bare_relay.py --client httpx,raw        # both upstream readers
    .venv/bin/python bench/bare_relay.py serve --port P --upstream http://127.0.0.1:E/client/v4

From another script: `await measure(emu_url, k, tokens, rate, ttft, repeat, pin)` (or the
sync `run(...)`) starts a relay process, drives K websocket clients through it and returns the
relay's CPU seconds, tokens delivered, CPU us per token, RSS and per-stream checks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LOG_DIR = RESULTS / "var"

sys.path.insert(0, str(ROOT))  # run as a file: make `bench.relay` importable
from bench.relay import (  # noqa: E402  (the shared helpers of the relay benchmark)
    CF_ACCOUNT,
    CF_MODEL,
    CF_TOKEN,
    PROMPT_PREFIX,
    StatusError,
    _ks,
    can_pin,
    cpu_seconds,
    event_payloads,
    free_port,
    httpx_chunks,
    quantile,
    raw_chunks,
    rss_kib,
    sse_events,
    u16_len,
)

CLIENTS = ("httpx", "raw")


def dumps(value: Any) -> str:
    # The app's consumer encodes frames exactly so (compact, UTF-8 kept).
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def prompt_for(tag: str, magic: str) -> str:
    return f"{PROMPT_PREFIX} #{tag} {magic}"


# --- the upstream stream ------------------------------------------------------------------------
def event_texts(event: bytes, texts: list[str]) -> bool:
    """Append the `response` deltas of one SSE event to `texts`; True at `[DONE]`."""
    payloads, done = event_payloads(event)
    for payload in payloads:
        if payload.get("errors"):
            raise ValueError("upstream error event")
        text = payload.get("response")
        if isinstance(text, str) and text:
            texts.append(text)
    return done


def cf_request(base: str, prompt: str, max_tokens: int) -> tuple[str, bytes, dict[str, str]]:
    """The Cloudflare `ai/run` streaming request the app sends (providers/cloudflare.py)."""
    url = f"{base.rstrip('/')}/accounts/{CF_ACCOUNT}/ai/run/{CF_MODEL}"
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "stream": True,
                       "max_tokens": max_tokens}).encode()
    headers = {"Authorization": f"Bearer {CF_TOKEN}", "Content-Type": "application/json",
               "Accept": "text/event-stream, application/json"}
    return url, body, headers


# --- the relay server ---------------------------------------------------------------------------
class Coalescer:
    """One answer's deltas -> `d` frames at most every `window` seconds: the app's
    Generation._maybe_flush/_flush (conversations/answers/runner.py) without render or save."""

    def __init__(self, ws: ServerConnection, seq: int, window: float) -> None:
        self.ws = ws
        self.seq = seq
        self.window = window
        self.parts: list[str] = []
        self.length = 0
        self.sent = 0
        self.sent_u16 = 0
        self.last_flush = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.pending: set[asyncio.Task[None]] = set()
        self.lock = asyncio.Lock()

    @property
    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""

    async def add(self, delta: str) -> None:
        self.parts.append(delta)
        self.length += len(delta)
        now = time.monotonic()
        if now - self.last_flush >= self.window:
            await self.flush()
        elif self.timer is None:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(self.window - (now - self.last_flush), self._later)

    def _later(self) -> None:
        task = asyncio.ensure_future(self.flush())
        self.pending.add(task)  # a task nobody holds may be garbage-collected mid-run
        task.add_done_callback(self.pending.discard)

    async def flush(self) -> None:
        async with self.lock:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.last_flush = time.monotonic()
            if self.length == self.sent:
                return
            text = self.text  # what this flush sends; later deltas wait for the next one
            piece, offset = text[self.sent:], self.sent_u16
            self.sent = len(text)
            self.sent_u16 += u16_len(piece)
            await self.ws.send(dumps(["d", self.seq, offset, piece]))

    async def close(self) -> None:
        await self.flush()
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)


class RelayServer:
    def __init__(self, upstream: str, client: str, window: float) -> None:
        self.upstream = upstream
        self.client = client
        self.window = window
        # One pooled client for the process (the app builds one per answer; over a 500-token
        # answer that difference is noise, and the baseline should be the cheap side).
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, read=60.0), trust_env=False, follow_redirects=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        ) if client == "httpx" else None

    async def handler(self, ws: ServerConnection) -> None:
        seq = 0
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                try:
                    frame = json.loads(raw)
                except ValueError:
                    frame = None
                if not isinstance(frame, dict) or frame.get("type") != "start":
                    continue  # acks and anything else: nothing to do in a bare relay
                seq += 1
                await self.relay(ws, seq, frame)

    def _chunks(self, url: str, body: bytes,
                headers: dict[str, str]) -> AsyncGenerator[bytes, None]:
        if self.http is not None:
            return httpx_chunks(self.http, url, body, headers)
        return raw_chunks(url, body, headers)

    async def relay(self, ws: ServerConnection, seq: int, frame: dict[str, Any]) -> None:
        url, body, headers = cf_request(self.upstream, str(frame.get("prompt", "")),
                                        int(frame.get("max_tokens", 1024)))
        out = Coalescer(ws, seq, self.window)
        texts: list[str] = []
        status, error, done = "complete", "", False
        try:
            async with contextlib.aclosing(self._chunks(url, body, headers)) as chunks:
                buffer = bytearray()
                async for chunk in chunks:
                    buffer += chunk
                    for event in sse_events(buffer):
                        start = len(texts)
                        done = event_texts(event, texts) or done
                        for text in texts[start:]:
                            await out.add(text)
            if not done:
                status, error = "failed", "truncated"
        except (StatusError, httpx.HTTPError, OSError, asyncio.IncompleteReadError,
                ValueError) as exc:
            status, error = "failed", type(exc).__name__
        await out.close()
        await ws.send(dumps({"type": "state", "seq": seq, "tag": frame.get("tag"),
                             "status": status, "error": error, "tokens": len(texts),
                             "length": out.sent_u16}))


async def serve_forever(port: int, upstream: str, client: str, window_ms: int) -> None:
    relay = RelayServer(upstream, client, window_ms / 1000)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with serve(relay.handler, "127.0.0.1", port, compression=None, max_size=2**20,
                     ping_interval=None):
        print(f"bare relay on ws://127.0.0.1:{port}/ ({client}, window {window_ms} ms)",
              flush=True)
        await stop.wait()
    if relay.http is not None:
        await relay.http.aclose()


# --- the load side ------------------------------------------------------------------------------
@dataclass
class Stream:
    tag: str
    error: str = ""
    t_send: float = 0.0
    t_first: float | None = None
    t_end: float | None = None
    d_frames: int = 0
    frames: int = 0
    wire_bytes: int = 0
    relay_tokens: int | None = None  # upstream tokens the relay counted (its state frame)


async def drive(ws: ClientConnection, res: Stream, prompt: str, max_tokens: int,
                expected: str | None, start_at: float, timeout: float) -> None:
    """One answer through the relay: send `start`, apply `d` frames by offset, check the text
    (unless `expected` is None)."""
    delay = start_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    pieces: list[str] = []
    position = 0
    state: dict[str, Any] = {}
    res.t_send = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            await ws.send(dumps({"type": "start", "tag": res.tag, "prompt": prompt,
                                 "max_tokens": max_tokens}))
            while not state:
                raw = await ws.recv(decode=False)
                res.frames += 1
                res.wire_bytes += len(raw)
                frame = json.loads(raw)
                if isinstance(frame, list) and frame[0] == "d":
                    res.t_first = res.t_first or time.monotonic()
                    res.d_frames += 1
                    if int(frame[2]) != position and not res.error:
                        res.error = "offset_gap"
                    pieces.append(frame[3])
                    position = int(frame[2]) + u16_len(frame[3])
                elif isinstance(frame, dict) and frame.get("type") == "state":
                    state = frame
        res.t_end = time.monotonic()
    except TimeoutError:
        res.error = res.error or "timeout"
    except ConnectionClosed:
        res.error = res.error or "closed"
    res.relay_tokens = state.get("tokens")
    if not res.error:
        if state.get("status") != "complete":
            res.error = f"status_{state.get('status')}_{state.get('error')}"
        elif expected is not None and "".join(pieces) != expected:
            res.error = "text_mismatch"


async def learn_answer(emu_url: str, tokens: int) -> list[str]:
    """The token list every stream must deliver: one unpaced stream read straight from the
    emulator (the answer depends on the prompt's first 40 characters only)."""
    url, body, headers = cf_request(f"{emu_url}/client/v4",
                                    prompt_for("bare-warmup", f"[[emu:tokens n={tokens} ttft=0]]"),
                                    max(1024, tokens))
    texts: list[str] = []
    done = False
    buffer = bytearray()
    async with contextlib.aclosing(raw_chunks(url, body, headers)) as chunks:
        async for chunk in chunks:
            buffer += chunk
            for event in sse_events(buffer):
                done = event_texts(event, texts) or done
    if not done or len(texts) != tokens:
        raise RuntimeError(f"warm-up stream: {len(texts)} tokens, [DONE] seen: {done}")
    return texts


class RelayProcess:
    """`bare_relay.py serve` as a child process on a free port (pinned to core 0 if asked)."""

    def __init__(self, emu_url: str, client: str, window_ms: int, pinned: bool) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/"
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log = LOG_DIR / f"bare-relay-{self.port}.log"
        argv = [sys.executable, str(Path(__file__).resolve()), "serve", "--port",
                str(self.port), "--upstream", f"{emu_url}/client/v4", "--client", client,
                "--window-ms", str(window_ms)]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [*(["taskset", "-c", "0"] if pinned else []), *argv], cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log,
                stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid  # taskset execs the program: the same pid

    async def ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited with {self.proc.returncode}; see {self.log}")
            with contextlib.suppress(OSError):
                _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"relay not listening after {timeout:.0f}s; see {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.returncode == 0:  # a clean exit: the log only says where it listened
            self.log.unlink(missing_ok=True)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def _pct(part: float, whole: float) -> float | None:
    return round(100 * part / whole, 1) if whole else None


async def _open(url: str, k: int) -> list[ClientConnection]:
    gate = asyncio.Semaphore(20)  # no connection storm on the relay's listen backlog

    async def one() -> ClientConnection:
        async with gate:
            return await connect(url, compression=None, max_size=2**22, ping_interval=None,
                                 proxy=None, open_timeout=30)

    return list(await asyncio.gather(*(one() for _ in range(k))))


async def _warm_up(conns: list[ClientConnection], run_id: str, timeout: float) -> None:
    """One short unpaced answer per connection before measuring, as relay.py's A1 slots get:
    the first stream of a process pays for lazy imports and pools (~0.3 s with httpx)."""
    warm = [Stream(f"bare-{run_id}-warm-{i}") for i in range(len(conns))]
    await asyncio.gather(*(
        drive(ws, res, prompt_for(res.tag, "[[emu:tokens n=12 ttft=0]]"), 1024, None,
              0.0, timeout) for ws, res in zip(conns, warm, strict=True)))
    failed = [s.error for s in warm if s.error]
    if failed:
        raise RuntimeError(f"warm-up through the relay failed: {failed[:3]}")


async def measure(emu_url: str, k: int, tokens: int, rate: float, ttft: float, repeat: int,
                  pin: bool, *, client: str = "httpx", spread: float = 1.0, window_ms: int = 100,
                  timeout: float | None = None, emu_pid: int | None = None,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """K websocket clients stream `tokens` tokens at `rate`/s through a fresh bare relay,
    `repeat` times; returns the relay's CPU per delivered token and the stream checks.

    `emu_url` is the emulator's root (`http://127.0.0.1:PORT`). With `pin` and two cores the
    relay runs on core 0 and this process on core 1 (its affinity is restored at the end).
    `emu_pid` adds the emulator's CPU to the load-side share."""
    if client not in CLIENTS:
        raise ValueError(f"client must be one of {CLIENTS}")
    pinned = pin and can_pin()
    timeout = timeout or ttft + tokens / rate + spread + 30.0
    expected = "".join(await learn_answer(emu_url, tokens))
    magic = f"[[emu:tokens n={tokens} rate={rate:g} ttft={ttft:g}]]"
    affinity = os.sched_getaffinity(0) if pinned else None
    relay = RelayProcess(emu_url, client, window_ms, pinned)
    conns: list[ClientConnection] = []
    batches: list[dict[str, Any]] = []
    streams: list[Stream] = []
    run_id = f"{os.getpid():x}{time.monotonic_ns() % 0xFFFFFF:x}"
    try:
        if pinned:
            os.sched_setaffinity(0, {1})  # the load side shares core 1 with the emulator
        await relay.ready()
        rss_idle = rss_kib(relay.pid)
        conns = await _open(relay.url, k)
        rss_open = rss_kib(relay.pid)  # before any stream: the cost of an idle websocket
        await _warm_up(conns, run_id, timeout)
        for rnd in range(repeat):
            results = [Stream(f"bare-{run_id}-{k}-{rnd}-{i}") for i in range(k)]
            pids = (relay.pid, os.getpid(), emu_pid)
            cpu0 = [cpu_seconds(p) if p else 0.0 for p in pids]
            t0 = time.monotonic() + 0.05
            await asyncio.gather(*(
                drive(ws, res, prompt_for(res.tag, magic), max(1024, tokens), expected,
                      t0 + spread * i / k, timeout)
                for i, (ws, res) in enumerate(zip(conns, results, strict=True))))
            wall = time.monotonic() - t0
            relay_cpu, bench_cpu, emu_cpu = (
                (cpu_seconds(p) if p else 0.0) - c for p, c in zip(pids, cpu0, strict=True))
            errors = sum(1 for s in results if s.error)
            batches.append({"round": rnd, "wall_s": round(wall, 3),
                            "relay_cpu_s": round(relay_cpu, 3), "bench_cpu_s": round(bench_cpu, 3),
                            "emulator_cpu_s": round(emu_cpu, 3) if emu_pid else None,
                            "ok": k - errors, "errors": errors,
                            "relay_rss_kib": rss_kib(relay.pid)})
            streams += results
            if log:
                log(f"bare relay K={k:<4} ({client}) round {rnd + 1}/{repeat}: {wall:5.1f}s, "
                    f"relay CPU {relay_cpu:.2f}s, {errors} errors")
    finally:
        await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
        relay.stop()
        if affinity is not None:
            os.sched_setaffinity(0, affinity)
    return _summary(_config(k, tokens, rate, ttft, repeat, client, spread, window_ms,
                                       pinned, emu_pid), batches, streams, rss_idle, rss_open)


def _config(k: int, tokens: int, rate: float, ttft: float, repeat: int, client: str,
                       spread: float, window_ms: int, pinned: bool,
                       emu_pid: int | None) -> dict[str, Any]:
    return {"k": k, "tokens": tokens, "rate": rate, "ttft": ttft, "repeat": repeat,
            "client": client, "spread": spread, "window_ms": window_ms, "pinned": pinned,
            "emulator_counted": emu_pid is not None}


def _summary(config: dict[str, Any], batches: list[dict[str, Any]], streams: list[Stream],
             rss_idle: int | None, rss_open: int | None) -> dict[str, Any]:
    good = [s for s in streams if not s.error]
    delivered = config["tokens"] * len(good)
    relay_cpu = sum(b["relay_cpu_s"] for b in batches)
    bench_cpu = sum(b["bench_cpu_s"] for b in batches)
    emu_cpu = sum(b["emulator_cpu_s"] or 0.0 for b in batches)
    wall = sum(b["wall_s"] for b in batches)
    kinds: dict[str, int] = {}
    for s in streams:
        if s.error:
            kinds[s.error] = kinds.get(s.error, 0) + 1
    d_frames = [float(s.d_frames) for s in good]
    ttfts = [s.t_first - s.t_send for s in good if s.t_first is not None]
    rss_end = batches[-1]["relay_rss_kib"] if batches else None
    k = config["k"]
    return {
        **config,
        "streams": len(streams), "ok": len(good), "errors": len(streams) - len(good),
        "error_kinds": kinds,
        "tokens_delivered": delivered,
        "relay_cpu_s": round(relay_cpu, 3),
        "relay_cpu_us_per_token": round(relay_cpu / delivered * 1e6, 1) if delivered else None,
        "relay_core_pct": _pct(relay_cpu, wall),
        "load_core_pct": _pct(bench_cpu + emu_cpu, wall),
        "bench_core_pct": _pct(bench_cpu, wall),
        "relay_rss_kib": {"idle": rss_idle, "connected": rss_open, "end": rss_end},
        "relay_rss_kib_per_connection": (round((rss_open - rss_idle) / k, 1)
                                         if rss_open and rss_idle else None),
        "d_frames_per_stream": {"p50": quantile(d_frames, 0.5), "min": min(d_frames, default=None),
                                "max": max(d_frames, default=None)},
        "frames_per_stream_p50": quantile([float(s.frames) for s in good], 0.5),
        "wire_bytes_per_stream_p50": quantile([float(s.wire_bytes) for s in good], 0.5),
        "relay_tokens_seen": sorted({s.relay_tokens for s in good if s.relay_tokens is not None}),
        "ttft_from_start_ms": {"p50": _ms(quantile(ttfts, 0.5)),
                               "p99": _ms(quantile(ttfts, 0.99))},
        "wall_s": round(wall, 2),
        "batches": batches,
    }


def run(emu_url: str, k: int, tokens: int, rate: float, ttft: float, repeat: int, pin: bool,
        **options: Any) -> dict[str, Any]:
    """`measure` for synchronous callers (not from inside a running event loop)."""
    return asyncio.run(measure(emu_url, k, tokens, rate, ttft, repeat, pin, **options))


# --- standalone ---------------------------------------------------------------------------------
def _clients(text: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    if not values or any(v not in CLIENTS for v in values):
        raise argparse.ArgumentTypeError("--client takes httpx, raw or httpx,raw")
    return values


def parse_bench(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/bare_relay.py",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--k", type=_ks, help="concurrency levels (default 1,10,100; quick 1,10)")
    parser.add_argument("--tokens", type=int, help="answer length (default 500; quick 60)")
    parser.add_argument("--rate", type=float, help="tokens per second (default 50; quick 100)")
    parser.add_argument("--ttft", type=float, help="emulator TTFT, s (default 0.2; quick 0.1)")
    parser.add_argument("--repeat", type=int, help="rounds per K (default 1)")
    parser.add_argument("--spread", type=float,
                        help="start the K streams evenly over this many s (default 1; quick 0.2)")
    parser.add_argument("--window-ms", type=int, default=100, help="coalescing window (100)")
    parser.add_argument("--client", type=_clients, default=("httpx",),
                        help="the relay's upstream reader: httpx (default, as the app), raw "
                             "(bare asyncio HTTP/1.1), or httpx,raw for both")
    parser.add_argument("--quick", action="store_true", help="small defaults: < 30 s")
    parser.add_argument("--json", type=Path, help="output (default "
                        "bench/results/bare-relay-<UTC time>.json)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    args = parser.parse_args(argv)

    def pick(value: Any, full: Any, fast: Any) -> Any:
        return value if value is not None else (fast if args.quick else full)

    args.k = pick(args.k, (1, 10, 100), (1, 10))
    args.tokens = pick(args.tokens, 500, 60)
    args.rate = pick(args.rate, 50.0, 100.0)
    args.ttft = pick(args.ttft, 0.2, 0.1)
    args.repeat = pick(args.repeat, 1, 1)
    args.spread = pick(args.spread, 1.0, 0.2)
    if args.tokens < 1 or args.rate <= 0 or args.ttft < 0 or args.repeat < 1 or args.spread < 0:
        parser.error("need --tokens >= 1, --rate > 0, --ttft >= 0, --repeat >= 1, --spread >= 0")
    return args


def start_emulator(pinned: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / "bare-relay-emulator.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*(["taskset", "-c", "1"] if pinned else []), sys.executable, "-m",
             "providers.emulators", "--port", str(port)], cwd=ROOT, stdout=log,
            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited with {proc.returncode}; see {log_path}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/_emulator/health", timeout=2.0,
                         trust_env=False).status_code == 200:
                return proc, url
        time.sleep(0.1)
    proc.terminate()
    raise RuntimeError(f"emulator not healthy after 30 s; see {log_path}")


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_table(args: argparse.Namespace, levels: list[dict[str, Any]], pinned: bool) -> str:
    lines = [
        f"Bare websockets relay: {args.tokens} tokens at {args.rate:g}/s, ttft {args.ttft:g}s, "
        f"{args.repeat} round(s), starts spread over {args.spread:g}s, window "
        f"{args.window_ms} ms, pinned: {pinned}",
        f"{'K':>4} {'client':<6} {'streams':>7} {'err':>4} {'relay CPU s':>11} "
        f"{'us/token':>8} {'relay %':>7} {'load %':>6} {'d/stream':>8} {'RSS MiB':>7} "
        f"{'KiB/conn':>8} {'TTFT p50/p99 ms':>16}",
    ]
    for lv in levels:
        ttft = lv["ttft_from_start_ms"]
        lines.append(
            f"{lv['k']:>4} {lv['client']:<6} {lv['streams']:>7} {lv['errors']:>4} "
            f"{lv['relay_cpu_s']:>11.2f} {_num(lv['relay_cpu_us_per_token'], '.0f'):>8} "
            f"{_num(lv['relay_core_pct'], '.0f'):>7} {_num(lv['load_core_pct'], '.0f'):>6} "
            f"{_num(lv['d_frames_per_stream']['p50'], '.0f'):>8} "
            f"{_num((lv['relay_rss_kib']['end'] or 0) / 1024, '.1f'):>7} "
            f"{_num(lv['relay_rss_kib_per_connection'], '.0f'):>8} "
            f"{_num(ttft['p50'], '.1f') + '/' + _num(ttft['p99'], '.1f'):>16}")
    busy = [f"K={lv['k']} {lv['client']}" for lv in levels if (lv["load_core_pct"] or 0) > 70]
    if busy:
        lines.append("Load side (this script + emulator) above 70% of its core in: "
                     + ", ".join(busy))
    return "\n".join(lines)


def bench_main(argv: Sequence[str]) -> int:
    args = parse_bench(argv)
    pinned = not args.no_pin and can_pin()
    started = datetime.now(UTC)
    loadavg = os.getloadavg()
    emulator, emu_url = start_emulator(pinned)
    levels: list[dict[str, Any]] = []
    try:
        for k in args.k:
            for client in args.client:
                levels.append(run(emu_url, k, args.tokens, args.rate, args.ttft, args.repeat,
                                  not args.no_pin, client=client, spread=args.spread,
                                  window_ms=args.window_ms, emu_pid=emulator.pid,
                                  log=lambda m: print(m, file=sys.stderr, flush=True)))
    except (RuntimeError, OSError) as exc:
        print(f"bare relay benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        emulator.terminate()
        emulator.wait(10)
    path = (args.json or RESULTS / f"bare-relay-{started:%Y%m%d-%H%M%S}.json").resolve()
    report = {
        "benchmark": "bare-relay", "started": started.isoformat(timespec="seconds"),
        "config": {key: (str(v) if isinstance(v, Path) else v) for key, v in vars(args).items()},
        "environment": {"cpus": os.cpu_count(), "pinned": pinned,
                        "python": platform.python_version(), "httpx": httpx.__version__,
                        "websockets": websockets.__version__, "platform": platform.platform(),
                        "loadavg_1m_start_end": [round(loadavg[0], 2),
                                                 round(os.getloadavg()[0], 2)]},
        "levels": levels,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(render_table(args, levels, pinned))
    print(f"\nJSON: {path}")
    return 0


def serve_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/bare_relay.py serve")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True,
                        help="Cloudflare base URL, e.g. http://127.0.0.1:9100/client/v4")
    parser.add_argument("--client", choices=CLIENTS, default="httpx")
    parser.add_argument("--window-ms", type=int, default=100)
    args = parser.parse_args(argv)
    asyncio.run(serve_forever(args.port, args.upstream, args.client, args.window_ms))
    return 0


def _raise_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # run the `finally` blocks that stop the child processes


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return serve_main(argv[1:])
    signal.signal(signal.SIGTERM, _raise_exit)
    return bench_main(argv)


if __name__ == "__main__":
    sys.exit(main())
