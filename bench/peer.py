"""Peer arm (issue 16): our `/v1` against Open WebUI on the same upstream stream, same client.

`make bench-peer` installs Open WebUI from the package index into its own virtualenv
(`bench/.peer-venv`, git-ignored) and runs this script. Never part of `make test` or CI.

Processes, all on 127.0.0.1, started and stopped here:

- the provider emulator and our app (daphne, embedded stack: SQLite, in-memory layer) as
  bench/relay.py starts them; a `/v1` API token for user `bench-0` (`create_api_token`);
- `bench/peer.py upstream`: a small OpenAI-compatible server (`GET /v1/models`,
  `POST /v1/chat/completions`, streaming) that serves the **same tokens** as the emulator's
  Cloudflare answer (learnt from an unpaced emulator stream first) on the emulator's schedule
  (arrival + ttft + i / rate, absolute deadlines, a `"ts"` key per event) and records each
  request's arrival by the prompt's tag;
- Open WebUI (`uvicorn open_webui.main:app`, one process) with `OPENAI_API_BASE_URL` on that
  upstream, Ollama off, offline (no model downloads, no update checks), a fresh `DATA_DIR`;
  the first account signed up is its admin and its JWT is the bearer token.

The daphne and uvicorn processes are pinned to core 0; emulator, upstream and this load
generator to core 1 (when `taskset` and two cores exist). Both servers log at WARNING, without
access lines.

Arms, interleaved in every round at each K (K streams started evenly over `--spread` s):

- `direct-cf`: this client reads the emulator's Cloudflare stream directly (the floor of ours);
- `ours`: `POST /v1/chat/completions` on daphne (stream), to the emulator's Cloudflare model;
- `direct-oa`: this client reads the OpenAI upstream directly (the floor of Open WebUI's);
- `openwebui`: `POST /api/chat/completions` on Open WebUI (stream), to the upstream;
- `daphne-bare` and `uvicorn-bare`, the server floors: `bench/floor_site/raw.py`, a bare ASGI
  app (no Django) relaying the emulator's Cloudflare stream chunk by chunk with httpx, served
  by daphne from our virtualenv and by uvicorn from Open WebUI's (as Open WebUI runs on it),
  both pinned to core 0. What each server costs per token before any application code:
  ours runs on daphne, Open WebUI on uvicorn. `--no-floors` leaves them out.

One httpx client reads every arm; a token "arrives" when the streamed text first covers it,
and every stream must deliver the answer exactly (else `text_mismatch`). For each system
against its own direct arm: **added TTFT** (p50 of first-token time from the request minus
the direct arm's), **added per-token delay** (p50 over all tokens of arrival minus the
upstream's send slot, minus the direct arm's), and **CPU per token** (utime + stime of the
server process tree during its batches / tokens delivered). Memory: RSS of each server at
the end.

    make bench-peer                                # K = 1, 8, 32; 300 tokens at 50/s
    make bench-peer PEER_ARGS="--k 1,8 --repeat 2"
    bench/.peer-venv must hold open_webui (the make target installs it); this script never
    installs anything and fails loudly when Open WebUI cannot be started.

Output: a table on stdout and `bench/results/peer-<UTC time>.json` (`make bench` reads the
latest one for its `/v1 vs Open WebUI` rows). Logs: `bench/results/var-peer/*.log`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/peer.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

from bench.relay import (  # noqa: E402  (after the path fix above)
    CF_ACCOUNT,
    CF_MODEL,
    CF_TOKEN,
    PROMPT_PREFIX,
    RESULTS,
    TAG_RE,
    Bench,
    Stack,
    _sleep_until,
    _tags_of,
    can_pin,
    cpu_seconds,
    event_payloads,
    free_port,
    parse_args,
    process_tree,
    quantile,
    rss_kib,
    sse_events,
)

PEER_VENV = ROOT / "bench" / ".peer-venv"
VAR = RESULTS / "var-peer"
MODEL = "llama-3.2-3b"  # our slug; the upstream serves the same id to Open WebUI
ARMS = ("direct-cf", "ours", "daphne-bare", "uvicorn-bare", "direct-oa", "openwebui")
SERVER_FLOORS = ("daphne-bare", "uvicorn-bare")  # --no-floors leaves these out
# system -> its direct arm (the floor its added times are measured from)
SYSTEMS = {"ours": "direct-cf", "daphne-bare": "direct-cf", "uvicorn-bare": "direct-cf",
           "openwebui": "direct-oa"}
MARKER_RE = re.compile(r"\[\[emu:tokens ([^\]]*)\]\]")


# --- the OpenAI-compatible upstream (`bench/peer.py upstream`) ---------------------------------
class Upstream:
    """A keep-alive HTTP/1.1 server speaking OpenAI's streaming chat completions, paced like
    the emulator's Pacer: token i is written at arrival + ttft + i / rate."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.recorded: list[dict[str, Any]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        method, path, _ = head[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in head[1:] if line)}
        body = await _read_body(reader, headers)
        arrival = time.monotonic()
        path = path.split("?", 1)[0]
        if method == "POST" and path.endswith("/chat/completions"):
            request = json.loads(body or b"{}")
            self.recorded.append({"t": arrival, "tags": TAG_RE.findall(body.decode())})
            await self._completion(writer, request, arrival)
        elif path.endswith("/models"):
            _reply(writer, 200, {"object": "list", "data": [
                {"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}]})
        elif path == "/_peer/requests":
            _reply(writer, 200, {"requests": self.recorded})
        elif path == "/_peer/reset":
            self.recorded = []
            _reply(writer, 200, {"ok": True})
        else:
            _reply(writer, 404, {"error": {"message": f"no route {method} {path}"}})
        await writer.drain()
        return headers.get("connection", "").lower() != "close"

    async def _completion(self, writer: asyncio.StreamWriter, request: dict[str, Any],
                          arrival: float) -> None:
        n, rate, ttft = _pacing(request, len(self.tokens))
        tokens = self.tokens[:n]
        base = {"id": f"chatcmpl-{secrets.token_hex(8)}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": request.get("model", MODEL)}
        usage = {"prompt_tokens": 10, "completion_tokens": len(tokens),
                 "total_tokens": 10 + len(tokens)}
        if not request.get("stream"):
            _reply(writer, 200, {**base, "object": "chat.completion", "usage": usage,
                                 "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                     "role": "assistant", "content": "".join(tokens)}}]})
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        for index, token in enumerate(tokens):
            if rate:
                await _sleep_until(arrival + ttft + index / rate)
            delta = {"content": token, **({"role": "assistant"} if index == 0 else {})}
            _chunk(writer, {**base, "choices": [{"index": 0, "delta": delta,
                                                 "finish_reason": None}],
                            "ts": time.monotonic()})
            await writer.drain()
        _chunk(writer, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (request.get("stream_options") or {}).get("include_usage"):
            _chunk(writer, {**base, "choices": [], "usage": usage})
        data = b"data: [DONE]\n\n"
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while size := int((await reader.readline()).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readline()
        return body
    return await reader.readexactly(int(headers.get("content-length", "0")))


def _pacing(request: dict[str, Any], available: int) -> tuple[int, float, float]:
    """The emulator's marker in the last user message: `[[emu:tokens n= rate= ttft=]]`."""
    users = [m for m in request.get("messages") or [] if m.get("role") == "user"]
    content = users[-1].get("content") if users else ""
    match = MARKER_RE.search(content if isinstance(content, str) else json.dumps(content))
    params = dict(part.split("=", 1) for part in (match.group(1).split() if match else [])
                  if "=" in part)
    n = min(int(params.get("n", available)), available)
    return n, float(params.get("rate", 0)), float(params.get("ttft", 0))


def _reply(writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                 % (status, len(body)) + body)


def _chunk(writer: asyncio.StreamWriter, payload: dict[str, Any]) -> None:
    data = b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))


async def serve_upstream(port: int, tokens_file: Path) -> None:
    upstream = Upstream(json.loads(tokens_file.read_text()))
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


# --- processes ------------------------------------------------------------------------------------
class Peers:
    """The upstream and Open WebUI beside relay.py's Stack (emulator + daphne)."""

    def __init__(self, pinned: bool) -> None:
        self.pinned = pinned
        self.up_port, self.owui_port = free_port(), free_port()
        self.up_url = f"http://127.0.0.1:{self.up_port}"
        self.owui_url = f"http://127.0.0.1:{self.owui_port}"
        self.bare_urls: dict[str, str] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, argv: list[str], core: int, env: dict[str, str] | None = None,
               cwd: Path = ROOT) -> subprocess.Popen[bytes]:
        with (VAR / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen([*(["taskset", "-c", str(core)] if self.pinned else []),
                                     *argv], cwd=cwd, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_upstream(self, tokens: list[str]) -> None:
        path = VAR / "tokens.json"
        path.write_text(json.dumps(tokens, ensure_ascii=False))
        proc = self._spawn("upstream", [sys.executable, str(Path(__file__).resolve()),
                                        "upstream", "--port", str(self.up_port),
                                        "--tokens-file", str(path)], core=1)
        _wait_http(f"{self.up_url}/v1/models", proc, "upstream", 30)

    def start_openwebui(self) -> None:
        python = PEER_VENV / "bin" / "python"
        if not python.exists() or subprocess.run(
                [str(python), "-c", "import open_webui"], capture_output=True,
                check=False).returncode != 0:
            raise RuntimeError(f"Open WebUI is not installed in {PEER_VENV}: run `make "
                               "bench-peer` (it installs open-webui from the package index)")
        data = VAR / "openwebui"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        env = {"PATH": f"{PEER_VENV / 'bin'}:/usr/bin:/bin", "HOME": str(data),
               "LANG": "C.UTF-8", "DATA_DIR": str(data / "data"),
               "FROM_INIT_PY": "true",  # what `open-webui serve` sets: the packaged frontend
               "WEBUI_SECRET_KEY": secrets.token_urlsafe(32),
               "OPENAI_API_BASE_URL": f"{self.up_url}/v1", "OPENAI_API_KEY": "bench-upstream",
               "ENABLE_OLLAMA_API": "false",
               # Nothing from outside: no model downloads, no update checks, no telemetry.
               "OFFLINE_MODE": "true", "HF_HUB_OFFLINE": "1",
               "RAG_EMBEDDING_MODEL_AUTO_UPDATE": "false",
               "RAG_RERANKING_MODEL_AUTO_UPDATE": "false", "RAG_EMBEDDING_ENGINE": "openai",
               "ENABLE_VERSION_UPDATE_CHECK": "false", "ANONYMIZED_TELEMETRY": "false",
               "DO_NOT_TRACK": "true", "SCARF_NO_ANALYTICS": "true",
               "GLOBAL_LOG_LEVEL": "WARNING"}  # as our app runs here (LOG_LEVEL=WARNING)
        (data / "data").mkdir()
        proc = self._spawn("openwebui", [str(PEER_VENV / "bin" / "uvicorn"),
                                         "open_webui.main:app", "--host", "127.0.0.1",
                                         "--port", str(self.owui_port), "--workers", "1",
                                         "--log-level", "warning", "--no-access-log"],
                           core=0, env=env, cwd=data)
        _wait_http(f"{self.owui_url}/health", proc, "openwebui", 240)

    def start_bare(self, stack: Stack) -> None:
        """The server floors: bench/floor_site/raw.py (a bare ASGI relay of the emulator's
        Cloudflare stream, no Django) on daphne in our virtualenv and on uvicorn in Open
        WebUI's (its uvicorn, loop and HTTP parser as Open WebUI runs on them), pinned to
        the apps' core. What each server costs per token before any application code."""
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT),
               **{key: stack.env()[key] for key in ("CLOUDFLARE_BASE_URL",
                                                     "CLOUDFLARE_ACCOUNT_ID",
                                                     "CLOUDFLARE_API_TOKEN")}}
        servers = {
            "daphne-bare": lambda port: [sys.executable, "-m", "daphne", "-b", "127.0.0.1",
                                         "-p", str(port), "bench.floor_site.raw:application"],
            "uvicorn-bare": lambda port: [str(PEER_VENV / "bin" / "uvicorn"),
                                          "bench.floor_site.raw:application", "--host",
                                          "127.0.0.1", "--port", str(port), "--workers", "1",
                                          "--log-level", "warning", "--no-access-log"],
        }
        for name, argv in servers.items():
            port = free_port()
            proc = self._spawn(name, argv(port), core=0, env=env)
            self.bare_urls[name] = f"http://127.0.0.1:{port}"
            _wait_http(f"{self.bare_urls[name]}/healthz", proc, name, 30)

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # its own session: children too
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def _wait_http(url: str, proc: subprocess.Popen[bytes], name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (VAR / f"{name}.log").read_text(errors="replace").splitlines()[-30:]
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n" + "\n".join(tail))
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0, trust_env=False).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{name} did not answer {url} within {timeout:.0f} s; see "
                       f"{VAR / (name + '.log')}")


def api_token(stack: Stack) -> str:
    """A `/v1` token of bench-0, as an administrator makes one."""
    done = subprocess.run([sys.executable, "manage.py", "create_api_token", "bench-0",
                           "--name", "peer-bench"], cwd=ROOT, env=stack.env(),
                          capture_output=True, text=True, timeout=120, check=False)
    token = done.stdout.strip()
    if done.returncode != 0 or not token.startswith("lc-"):
        raise RuntimeError(f"create_api_token failed (exit {done.returncode}): "
                           f"{done.stderr.strip()[-300:]}")
    return token


async def openwebui_token(http: httpx.AsyncClient, base: str) -> str:
    """The first account signed up on a fresh Open WebUI is its admin; its JWT authorises."""
    reply = await http.post(f"{base}/api/v1/auths/signup", json={
        "name": "bench", "email": "bench@example.com",
        "password": "Bench-" + secrets.token_urlsafe(12)})
    if reply.status_code != 200 or "token" not in reply.json():
        raise RuntimeError(f"Open WebUI signup answered {reply.status_code}: {reply.text[:300]}")
    token = str(reply.json()["token"])
    models = await http.get(f"{base}/api/models", headers={"Authorization": f"Bearer {token}"})
    ids = [m.get("id") for m in models.json().get("data", [])] if models.is_success else []
    if MODEL not in ids:
        raise RuntimeError(f"Open WebUI does not list {MODEL} from the upstream (got {ids}, "
                           f"HTTP {models.status_code})")
    return token


# --- one stream -----------------------------------------------------------------------------------
@dataclass
class Stream:
    arm: str
    k: int
    round: int
    tag: str
    error: str = ""
    t_send: float = 0.0
    t_upstream: float | None = None
    arrivals: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    url: str
    headers: dict[str, str]
    dialect: str  # "cloudflare" (`response`) or "openai" (`choices[0].delta.content`)
    body: dict[str, Any]
    plain: bool = False  # the request body is the prompt itself (the server floors)


@dataclass
class Run:
    http: httpx.AsyncClient
    stack: Stack
    peers: Peers
    tokens: list[str]
    targets: dict[str, Target]
    rate: float
    ttft: float
    spread: float
    timeout: float
    arms: tuple[str, ...] = ARMS
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    batches: list[dict[str, Any]] = field(default_factory=list)
    streams: list[Stream] = field(default_factory=list)

    def prompt(self, tag: str) -> str:
        return (f"{PROMPT_PREFIX} #{tag} [[emu:tokens n={len(self.tokens)} rate={self.rate:g} "
                f"ttft={self.ttft:g}]]")

    def server_cpu(self, arm: str) -> float:
        if arm == "ours":
            return cpu_seconds(self.stack.pid("app"))
        if arm in ("openwebui", *SERVER_FLOORS):
            return sum(cpu_seconds(pid) for pid in process_tree(self.peers.pid(arm)))
        return 0.0


def _texts(event: bytes, dialect: str) -> tuple[list[str], bool]:
    """The answer text in one SSE event, in Cloudflare's or OpenAI's dialect; whether [DONE]."""
    payloads, done = event_payloads(event)
    texts: list[str] = []
    for payload in payloads:
        if dialect == "cloudflare":
            text = payload.get("response")
        else:
            choices = payload.get("choices") or [{}]
            text = (choices[0].get("delta") or {}).get("content")
        if isinstance(text, str) and text:
            texts.append(text)
    return texts, done


async def _chunks(http: httpx.AsyncClient, target: Target, body: dict[str, Any]
                  ) -> AsyncIterator[bytes]:
    content = ({"content": body["messages"][0]["content"].encode()} if target.plain
               else {"json": body})
    async with http.stream("POST", target.url, headers=target.headers, **content) as response:
        if response.status_code != 200:
            raise ValueError(f"http_{response.status_code}")
        async for chunk in response.aiter_raw():
            yield chunk


async def one_stream(run: Run, res: Stream, start_at: float) -> None:
    target = run.targets[res.arm]
    body = {**target.body, "messages": [{"role": "user", "content": run.prompt(res.tag)}]}
    ends, total = [], 0
    for token in run.tokens:
        total += len(token)
        ends.append(total)
    text, done = "", False
    await _sleep_until(start_at)
    res.t_send = time.monotonic()
    try:
        async with asyncio.timeout(run.timeout):
            buffer = bytearray()
            async for chunk in _chunks(run.http, target, body):
                now = time.monotonic()
                buffer += chunk
                for event in sse_events(buffer):
                    texts, finished = _texts(event, target.dialect)
                    done = done or finished
                    text += "".join(texts)
                    while len(res.arrivals) < len(ends) and len(text) >= ends[len(res.arrivals)]:
                        res.arrivals.append(now)
    except TimeoutError:
        res.error = "timeout"
    except ValueError as exc:
        res.error = str(exc) if str(exc).startswith("http_") else f"bad_{type(exc).__name__}"
    except (httpx.HTTPError, OSError) as exc:
        res.error = f"transport_{type(exc).__name__}"
    if not res.error and text != "".join(run.tokens):
        res.error = "text_mismatch" if done else "no_done"


async def _recorded(run: Run, arm: str) -> dict[str, float]:
    """The upstream's arrival time of each tagged request since its last reset (then reset)."""
    if arm in ("direct-cf", "ours", *SERVER_FLOORS):
        emu = run.stack.emu_url
        reply = await run.http.get(f"{emu}/_emulator/requests", params={"vendor": "cloudflare"})
        await run.http.post(f"{emu}/_emulator/reset", json={})
        return {tag: float(r["t"]) for r in reply.json()["requests"]
                if r.get("endpoint") == "model" for tag in _tags_of(r.get("json"))}
    reply = await run.http.get(f"{run.peers.up_url}/_peer/requests")
    await run.http.post(f"{run.peers.up_url}/_peer/reset")
    return {tag: float(r["t"]) for r in reply.json()["requests"] for tag in r["tags"]}


async def batch(run: Run, arm: str, k: int, rnd: int) -> None:
    results = [Stream(arm, k, rnd, f"bench-{run.run_id}-{arm}-{k}-{rnd}-{i}") for i in range(k)]
    cpu0 = run.server_cpu(arm)
    t0 = time.monotonic() + 0.05
    await asyncio.gather(*(one_stream(run, res, t0 + run.spread * i / k)
                           for i, res in enumerate(results)))
    wall = time.monotonic() - t0
    cpu = run.server_cpu(arm) - cpu0
    arrivals = await _recorded(run, arm)
    for res in results:
        res.t_upstream = arrivals.get(res.tag)
        if res.t_upstream is None and not res.error:
            res.error = "no_upstream_call"
    good = sum(1 for res in results if not res.error)
    run.batches.append({"arm": arm, "k": k, "round": rnd, "wall_s": round(wall, 3),
                        "server_cpu_s": round(cpu, 4),
                        "tokens_delivered": good * len(run.tokens)})
    run.streams += results


# --- metrics --------------------------------------------------------------------------------------
def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def summarise(run: Run, arm: str, k: int) -> dict[str, Any]:
    streams = [s for s in run.streams if s.arm == arm and s.k == k]
    good = [s for s in streams if not s.error and s.t_upstream is not None
            and len(s.arrivals) == len(run.tokens)]
    ttft = [s.arrivals[0] - s.t_send for s in good]
    delays = [a - (s.t_upstream + run.ttft + i / run.rate) for s in good
              for i, a in enumerate(s.arrivals) if s.t_upstream is not None]
    batches = [b for b in run.batches if b["arm"] == arm and b["k"] == k]
    cpu = sum(b["server_cpu_s"] for b in batches)
    tokens = sum(b["tokens_delivered"] for b in batches)
    errors: dict[str, int] = {}
    for s in streams:
        if s.error:
            errors[s.error] = errors.get(s.error, 0) + 1
    return {"streams": len(streams), "ok": len(good), "errors": errors,
            "ttft_ms": {"p50": _ms(quantile(ttft, 0.5)), "p99": _ms(quantile(ttft, 0.99))},
            "token_delay_ms": {"p50": _ms(quantile(delays, 0.5)),
                               "p99": _ms(quantile(delays, 0.99))},
            "server_cpu_s": round(cpu, 3),
            "cpu_us_per_token": round(cpu / tokens * 1e6, 1) if tokens and cpu else None}


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def level_report(run: Run, k: int) -> dict[str, Any]:
    arms = {arm: summarise(run, arm, k) for arm in run.arms}
    systems = {}
    for system, floor in SYSTEMS.items():
        if system not in arms:
            continue
        mine, base = arms[system], arms[floor]
        systems[system] = {
            "added_ttft_ms": _minus(mine["ttft_ms"]["p50"], base["ttft_ms"]["p50"]),
            "added_ttft_p99_ms": _minus(mine["ttft_ms"]["p99"], base["ttft_ms"]["p99"]),
            "added_token_ms": _minus(mine["token_delay_ms"]["p50"],
                                     base["token_delay_ms"]["p50"]),
            "added_token_p99_ms": _minus(mine["token_delay_ms"]["p99"],
                                         base["token_delay_ms"]["p99"]),
            "cpu_us_per_token": mine["cpu_us_per_token"],
            "errors": sum(mine["errors"].values()) + sum(base["errors"].values()),
        }
    return {"k": k, "arms": arms, "systems": systems}


def render(report: dict[str, Any]) -> str:
    def num(value: Any, spec: str = ".2f") -> str:
        return "-" if value is None else format(value, spec)

    lines = [f"{'K':>3}  {'system':<12} {'+TTFT p50':>10} {'+TTFT p99':>10} {'+tok p50':>9} "
             f"{'+tok p99':>9} {'CPU us/tok':>10} {'errors':>6}"]
    for level in report["levels"]:
        for system, row in level["systems"].items():
            lines.append(f"{level['k']:>3}  {system:<12} {num(row['added_ttft_ms']):>10} "
                         f"{num(row['added_ttft_p99_ms']):>10} {num(row['added_token_ms']):>9} "
                         f"{num(row['added_token_p99_ms']):>9} "
                         f"{num(row['cpu_us_per_token'], '.0f'):>10} {row['errors']:>6}")
    rss = report["rss_mib_end"]
    lines.append(f"RSS at the end: ours {num(rss['ours'], '.0f')} MiB, Open WebUI "
                 f"{num(rss['openwebui'], '.0f')} MiB (times in ms, over each system's direct "
                 "read of its own upstream)")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------------
def _ks(text: str) -> tuple[int, ...]:
    values = tuple(int(part) for part in text.split(",") if part.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("--k takes positive integers like 1,8,32")
    return values


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/peer.py", description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=_ks, default=(1, 8, 32))
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--ttft", type=float, default=0.2)
    parser.add_argument("--repeat", type=int, default=3, help="rounds per K (each: every arm)")
    parser.add_argument("--spread", type=float, default=1.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--no-floors", action="store_true",
                        help="leave out the daphne-bare and uvicorn-bare server floors")
    args = parser.parse_args(argv)
    if args.tokens < 2 or args.rate <= 0 or args.ttft < 0 or args.repeat < 1:
        parser.error("need --tokens >= 2, --rate > 0, --ttft >= 0, --repeat >= 1")
    return args


async def measure(args: argparse.Namespace, stack: Stack, peers: Peers) -> dict[str, Any]:
    cfg = stack.cfg
    bench = Bench(cfg, stack)  # its unpaced warm-up stream is the answer every arm must give
    try:
        tokens = list((await bench.learn_answer()).tokens)
    finally:
        await bench.aclose()
    peers.start_upstream(tokens)
    peers.start_openwebui()
    arms = tuple(arm for arm in ARMS if not (args.no_floors and arm in SERVER_FLOORS))
    if not args.no_floors:
        peers.start_bare(stack)
    limits = httpx.Limits(max_connections=4 * max(args.k) + 10,
                          max_keepalive_connections=4 * max(args.k) + 10)
    async with httpx.AsyncClient(timeout=120.0, limits=limits, trust_env=False) as http:
        owui = await openwebui_token(http, peers.owui_url)
        ours = await asyncio.to_thread(api_token, stack)
        openai_body = {"model": MODEL, "stream": True}
        targets = {
            "direct-cf": Target(f"{stack.emu_url}/client/v4/accounts/{CF_ACCOUNT}/ai/run/"
                                f"{CF_MODEL}", {"Authorization": f"Bearer {CF_TOKEN}"},
                                "cloudflare", {"stream": True, "max_tokens": 1024}),
            "ours": Target(f"{stack.app_url}/v1/chat/completions",
                           {"Authorization": f"Bearer {ours}"}, "openai", openai_body),
            "direct-oa": Target(f"{peers.up_url}/v1/chat/completions", {}, "openai",
                                openai_body),
            "openwebui": Target(f"{peers.owui_url}/api/chat/completions",
                                {"Authorization": f"Bearer {owui}"}, "openai", openai_body),
            **{name: Target(f"{url}/raw/", {}, "cloudflare", {}, plain=True)
               for name, url in peers.bare_urls.items()},
        }
        run = Run(http, stack, peers, tokens, targets, args.rate, args.ttft, args.spread,
                  timeout=args.ttft + args.tokens / args.rate + args.spread + 60, arms=arms)
        for arm in arms:  # warm-up: first-request costs (imports, pools) before any clock
            await batch(run, arm, 1, -1)
        run.streams, run.batches = [], []
        await _reset_recordings(run)
        for k in args.k:
            for rnd in range(args.repeat):
                for arm in arms:
                    await batch(run, arm, k, rnd)
                    bad = sum(1 for s in run.streams if s.arm == arm and s.k == k
                              and s.round == rnd and s.error)
                    print(f"K={k:<3} round {rnd + 1}/{args.repeat} {arm:<10} {bad} errors",
                          file=sys.stderr, flush=True)
        levels = [level_report(run, k) for k in args.k]
    owui_rss = sum(rss_kib(pid) or 0 for pid in process_tree(peers.pid("openwebui")))
    return {"levels": levels, "tokens": len(tokens), "answer": "".join(tokens),
            "rss_mib_end": {"ours": (rss_kib(stack.pid("app")) or 0) / 1024,
                            "openwebui": owui_rss / 1024},
            "batches": run.batches,
            "streams": [{"arm": s.arm, "k": s.k, "round": s.round, "error": s.error,
                         "tokens": len(s.arrivals)} for s in run.streams]}


async def _reset_recordings(run: Run) -> None:
    await run.http.post(f"{run.stack.emu_url}/_emulator/reset", json={})
    await run.http.post(f"{run.peers.up_url}/_peer/reset")


def _versions() -> dict[str, str]:
    done = subprocess.run([str(PEER_VENV / "bin" / "python"), "-c",
                           "import importlib.metadata as m; print(m.version('open-webui'), "
                           "m.version('uvicorn'), m.version('aiohttp'))"],
                          capture_output=True, text=True, check=False)
    parts = done.stdout.split()
    return dict(zip(("open_webui", "uvicorn", "aiohttp"), parts, strict=False))


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["upstream"]:
        sub = argparse.ArgumentParser(prog="bench/peer.py upstream")
        sub.add_argument("--port", type=int, required=True)
        sub.add_argument("--tokens-file", type=Path, required=True)
        up = sub.parse_args(argv[1:])
        asyncio.run(serve_upstream(up.port, up.tokens_file))
        return 0
    args = parse(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = (args.json or RESULTS / f"peer-{stamp}.json").resolve()
    VAR.mkdir(parents=True, exist_ok=True)
    cfg = parse_args(["--arms", "A0,A1", "--stack", "embedded", "--k", "1",
                      "--tokens", str(args.tokens), "--rate", str(args.rate),
                      "--ttft", str(args.ttft), "--var-dir", str(VAR / "app"),
                      *(["--no-pin"] if args.no_pin else [])])
    stack = Stack(cfg)
    peers = Peers(pinned=not args.no_pin and can_pin())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    started = time.monotonic()
    try:
        stack.start()
        report = asyncio.run(measure(args, stack, peers))
    except (RuntimeError, OSError, TimeoutError, httpx.HTTPError, ValueError) as exc:
        print(f"peer benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(stack.log_tail(), file=sys.stderr)
        return 1
    finally:
        peers.stop()
        stack.stop()
    report = {"benchmark": "peer", "started": stamp, "wall_s": round(time.monotonic() - started),
              "config": {"k": list(args.k), "tokens": args.tokens, "rate": args.rate,
                         "ttft": args.ttft, "repeat": args.repeat, "spread": args.spread,
                         "pinned": peers.pinned},
              "versions": _versions(), "loadavg_end": os.getloadavg(), **report}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(render(report))
    print(f"\nJSON: {out}")
    errors = sum(row["errors"] for level in report["levels"] for row in level["systems"].values())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
