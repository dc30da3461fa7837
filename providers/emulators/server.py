"""The emulator server: one asyncio HTTP/1.1 listener for all three vendors, routed by path.

Runs its own event loop in a daemon thread (`start()`/`stop()`, context managers) or in the
foreground (`main()`, ``python -m providers.emulators``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from providers.emulators import cloudflare, dashscope, qianfan
from providers.emulators.common import Handled, Options, try_parse
from providers.emulators.faults import VENDORS, Fault, Plan
from providers.emulators.http import Connection, HttpError, HttpRequest, read_request
from providers.emulators.state import Credentials, EmulatorState, RecordedRequest
from providers.emulators.stream import (
    FullReply,
    StreamReply,
    deliver_full,
    deliver_stream,
    json_reply,
)

logger = logging.getLogger(__name__)
HEAD_TIMEOUT = 30.0
# How long a kept-alive connection may sit idle before the server closes it. No vendor documents
# its figure; load balancers in front of them commonly use 15-60 s, and clients must cope with a
# server closing an idle connection whatever the value.
KEEP_ALIVE_IDLE = 15.0
FaultSpec = Fault | str | Sequence[Fault | str]
CONTROL_PREFIX = "/_emulator/"


class EmulatorServer:
    """Local HTTP server speaking Cloudflare Workers AI, DashScope and Qianfan wire formats."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: Credentials | None = None,
        *,
        dashscope_accept_data_uri: bool = False,
        dashscope_multi_image: bool = False,
        qianfan_unknown_keys: str = "refuse",
        cloudflare_licence_agreed: bool = False,
        timestamps: bool = True,
        image_fetch_timeout: float = 5.0,
        max_body_bytes: int = 64 * 1024 * 1024,
        max_recorded: int = 10_000,
        keep_alive: bool = True,
        keep_alive_idle: float = KEEP_ALIVE_IDLE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        # Given a server context, the emulator speaks HTTPS, as every vendor does (the transport
        # tests read streams through TLS this way).
        self.ssl_context = ssl_context
        self.port = port
        self.credentials = credentials or Credentials()
        self.options = Options(
            credentials=self.credentials,
            dashscope_accept_data_uri=dashscope_accept_data_uri,
            dashscope_multi_image=dashscope_multi_image,
            qianfan_unknown_keys=qianfan_unknown_keys,
            timestamps=timestamps,
            image_fetch_timeout=image_fetch_timeout,
        )
        self.max_body_bytes = max_body_bytes
        # Named switch: True serves many requests per connection (HTTP/1.1 as the vendors'
        # servers do); False closes after every response (the emulator's earlier behaviour).
        self.keep_alive = keep_alive
        self.keep_alive_idle = keep_alive_idle
        self.state = EmulatorState(
            self.credentials, cloudflare_agreed=cloudflare_licence_agreed, max_recorded=max_recorded
        )
        self._cloudflare = cloudflare.CloudflareHandler(self.state, self.options)
        self._dashscope = dashscope.DashScopeHandler(self.state, self.options)
        self._qianfan = qianfan.QianfanHandler(self.state, self.options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped: asyncio.Event | None = None

    # --- public API ------------------------------------------------------------------------
    @property
    def base_urls(self) -> dict[str, str]:
        root = self.url
        return {
            "cloudflare": f"{root}/client/v4",
            "dashscope": f"{root}/api/v1",
            "qianfan": root,
        }

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{_url_host(self.host)}:{self.port}"

    def script(self, vendor: str, fault: FaultSpec, times: int | None = 1) -> None:
        """Queue `fault` (or several, composed) for the next `times` model calls to `vendor`.

        Scripts run in FIFO order; `times=None` applies to every call until `reset()`. Strings
        are parsed like the magic syntax, e.g. ``"error-after n=3"`` or
        ``["crlf", Fault("error-after", n=3)]``.
        """
        self.state.script(vendor, _as_faults(fault), times)

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.state.requests()

    def calls(self, vendor: str) -> int:
        """Model calls (not token calls) received for `vendor`."""
        return self.state.calls(vendor)

    def connections(self, vendor: str | None = None) -> int:
        """TCP connections accepted since the last reset that carried a request for `vendor`
        (all connections when None): what a test asserts to prove keep-alive reuse."""
        return self.state.connections(vendor)

    def reset(self) -> None:
        self.state.reset()

    def expire_qianfan_tokens(self) -> None:
        self.state.expire_tokens()

    def set_cloudflare_licence(self, agreed: bool = True) -> None:
        self.state.set_agreed(self.credentials.cloudflare_account_id, agreed)

    def start(self) -> None:
        """Listen in a daemon thread; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="emulator", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise failure[0]

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> EmulatorServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EmulatorServer:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    async def serve_forever(self, on_ready: Callable[[EmulatorServer], None] | None = None) -> None:
        """Serve in the current event loop until cancelled (used by `main`)."""
        await self._open()
        if on_ready is not None:
            on_ready(self)
        try:
            await asyncio.Event().wait()
        finally:
            await self._close()

    # --- lifecycle -------------------------------------------------------------------------
    async def _open(self) -> None:
        loop = asyncio.get_running_loop()

        def protocol() -> _WatchedProtocol:
            return _WatchedProtocol(asyncio.StreamReader(loop=loop), self._on_connection, loop)

        self._server = await loop.create_server(protocol, self.host, self.port, backlog=2048,
                                                ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        await self._dashscope.aclose()

    # --- one connection, one or more requests ----------------------------------------------
    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.state.count_connection(None)
        vendors: set[str] = set()  # counted once per connection
        conn = Connection(writer)
        try:
            timeout = HEAD_TIMEOUT
            while True:
                conn = Connection(writer)
                await self._serve_one(reader, writer, conn, timeout, vendors)
                if not conn.reusable:
                    break
                timeout = self.keep_alive_idle
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # The server is stopping (a kept-alive connection is usually idle here). Ending the
            # task normally spares asyncio's stream callback an error log about a cancelled task.
            pass
        except Exception:
            # An emulator bug: say so loudly, and answer 500 rather than dropping the socket
            # (a drop would look like a deliberate `drop-after` fault to the client under test).
            logger.exception("emulator failed while handling a request")
            if not conn.started:
                with contextlib.suppress(Exception):
                    await conn.send(500, [("Content-Type", "text/plain")], b"emulator bug")
        finally:
            if task is not None:
                self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve_one(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: Connection,
        timeout: float,
        vendors: set[str],
    ) -> None:
        try:
            req = await asyncio.wait_for(
                read_request(reader, writer, self.max_body_bytes), timeout
            )
        except HttpError as exc:
            await conn.send(exc.status, [("Content-Type", "text/plain")], exc.message.encode())
            return
        except TimeoutError:
            return
        if req is None:
            return
        conn.keep_alive = self.keep_alive and req.wants_keep_alive
        arrived = time.monotonic()
        if req.path.startswith(CONTROL_PREFIX):
            await deliver_full(conn, self._control(req), Plan())
            return
        rec, handled = await self._route(req, arrived)
        if rec.vendor not in vendors:  # counted before the reply, so a client sees it at once
            vendors.add(rec.vendor)
            self.state.count_connection(rec.vendor)
        await self._deliver(writer, conn, rec, handled, arrived)

    async def _route(self, req: HttpRequest, arrived: float) -> tuple[RecordedRequest, Handled]:
        path = req.path
        match = cloudflare.PATH.match(path)
        if match:
            rec = self._record(req, "cloudflare", "model", arrived)
            scripted = self.state.take_script("cloudflare")
            account, model = match.group(1), match.group(2)
            return rec, await self._cloudflare.handle(req, rec, scripted, account, model)
        if path == dashscope.PATH:
            rec = self._record(req, "dashscope", "model", arrived)
            scripted = self.state.take_script("dashscope")
            return rec, await self._dashscope.handle(req, rec, scripted)
        match = qianfan.CHAT_PATH.match(path)
        if match:
            rec = self._record(req, "qianfan", "model", arrived)
            scripted = self.state.take_script("qianfan")
            return rec, await self._qianfan.handle(req, rec, scripted, match.group(1))
        if path == qianfan.TOKEN_PATH:
            rec = self._record(req, "qianfan", "token", arrived)
            return rec, (self._qianfan.token(req), Plan())
        return self._unrouted(req, arrived)

    def _unrouted(self, req: HttpRequest, arrived: float) -> tuple[RecordedRequest, Handled]:
        """Unknown paths, answered in the shape of the vendor whose prefix they share."""
        path = req.path
        if path.startswith("/client/v4/"):
            rec = self._record(req, "cloudflare", "other", arrived)
            reply = cloudflare.envelope_error(
                400, 7003, f"Could not route to {path}, perhaps your object identifier is invalid?"
            )
        elif path.startswith("/api/v1/"):
            rec = self._record(req, "dashscope", "other", arrived)
            reply = dashscope.error_reply(
                400, "InvalidParameter", "url error, please check url!", "emu-unrouted"
            )
        elif path.startswith(("/rpc/2.0/", "/oauth/")):
            rec = self._record(req, "qianfan", "other", arrived)
            reply = qianfan.error_reply(3)
        else:
            rec = self._record(req, "unknown", "other", arrived)
            reply = json_reply(404, {"error": "no such emulator endpoint", "path": path})
        return rec, (reply, Plan())

    def _record(
        self, req: HttpRequest, vendor: str, endpoint: str, arrived: float
    ) -> RecordedRequest:
        return self.state.record(
            RecordedRequest(
                vendor=vendor,
                method=req.method,
                path=req.path,
                query=dict(req.query),
                headers=dict(req.headers),
                json=try_parse(req.body),
                t=arrived,
                endpoint=endpoint,
                body_size=len(req.body),
            )
        )

    async def _deliver(
        self,
        writer: asyncio.StreamWriter,
        conn: Connection,
        rec: RecordedRequest,
        handled: Handled,
        arrived: float,
    ) -> None:
        reply, plan = handled
        self.state.update(rec, status=reply.status)
        sent: list[str] = []
        if isinstance(reply, StreamReply):
            work = deliver_stream(conn, reply, plan, arrived, sent)
        else:
            work = deliver_full(conn, reply, plan)
        try:
            outcome = await _unless_client_leaves(writer, work)
        finally:
            self.state.update(rec, sent_text="".join(sent))
        self.state.update(rec, outcome=outcome)

    # --- control endpoint ------------------------------------------------------------------
    def _control(self, req: HttpRequest) -> FullReply:
        name = req.path[len(CONTROL_PREFIX) :].strip("/")
        try:
            return self._control_action(name, req)
        except ValueError as exc:
            return json_reply(400, {"error": str(exc)})

    def _control_action(self, name: str, req: HttpRequest) -> FullReply:
        body = try_parse(req.body) if req.body else {}
        if name == "health":
            return json_reply(200, {"ok": True, "base_urls": self.base_urls})
        if name == "requests" and req.method == "GET":
            vendor = req.query.get("vendor")
            items = [r.public() for r in self.state.requests() if vendor in (None, r.vendor)]
            return json_reply(200, {"calls": self.state.all_calls(), "requests": items,
                                    "connections": self.state.all_connections()})
        if req.method != "POST":
            return json_reply(405, {"error": "use POST"})
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        if name == "script":
            vendor, faults, times = _script_request(body)
            self.state.script(vendor, faults, times)
            return json_reply(
                200,
                {
                    "ok": True,
                    "vendor": vendor,
                    "faults": [f.spec() for f in faults],
                    "times": times,
                },
            )
        if name == "reset":
            self.reset()
            return json_reply(200, {"ok": True})
        if name == "expire-qianfan-tokens":
            self.expire_qianfan_tokens()
            return json_reply(200, {"ok": True})
        if name == "cloudflare-licence":
            self.set_cloudflare_licence(bool(body.get("agreed", True)))
            return json_reply(200, {"ok": True})
        return json_reply(404, {"error": f"no control action {name!r}"})


async def _unless_client_leaves(writer: asyncio.StreamWriter, work: Any) -> str:
    """Run the delivery; cancel it if the client closes its side first."""
    delivery = asyncio.ensure_future(work)
    protocol = writer.transport.get_protocol()
    gone = protocol.peer_gone if isinstance(protocol, _WatchedProtocol) else asyncio.Event()
    watcher = asyncio.ensure_future(gone.wait())
    try:
        done, _ = await asyncio.wait({delivery, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if delivery in done:
            try:
                return str(delivery.result())
            except (ConnectionError, OSError):
                return "client-closed"  # reset by the peer while we were writing
        delivery.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await delivery
        return "client-closed"
    finally:
        watcher.cancel()
        delivery.cancel()


class _WatchedProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, plus an event set when the peer closes or the connection is
    lost. Watching it, unlike reading, leaves the bytes of a next kept-alive request alone."""

    def __init__(self, reader: asyncio.StreamReader, callback: Any,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(reader, callback, loop=loop)
        self.peer_gone = asyncio.Event()

    def eof_received(self) -> bool:
        self.peer_gone.set()
        return bool(super().eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer_gone.set()
        super().connection_lost(exc)


def _as_faults(fault: FaultSpec) -> list[Fault]:
    items = [fault] if isinstance(fault, Fault | str) else list(fault)
    return [item if isinstance(item, Fault) else Fault.parse(item) for item in items]


def _script_request(body: dict[str, Any]) -> tuple[str, list[Fault], int | None]:
    """``{"vendor", "fault": kind-or-spec, "times", ...params}`` or ``{"vendor", "faults":
    [{"kind", ...params}, ...], "times"}``."""
    vendor = body.get("vendor")
    if vendor not in VENDORS:
        raise ValueError(f"vendor must be one of {list(VENDORS)}")
    times = body.get("times", 1)
    if times is not None and not isinstance(times, int):
        raise ValueError("times must be an integer or null")
    if "faults" in body:
        items = body["faults"]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ValueError("faults must be a list of objects")
        return vendor, [Fault.from_mapping(item) for item in items], times
    spec = body.get("fault")
    if not isinstance(spec, str):
        raise ValueError("give 'fault' (a kind or spec) or 'faults' (a list)")
    base = Fault.parse(spec)
    params = {k: v for k, v in body.items() if k not in {"vendor", "fault", "times"}}
    return vendor, [Fault(base.kind, **{**base.params, **params})], times


def _url_host(host: str) -> str:
    if host in {"", "0.0.0.0"}:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def main(
    host: str = "127.0.0.1",
    port: int = 9100,
    *,
    dashscope_accept_data_uri: bool = False,
    cloudflare_licence_agreed: bool = False,
    credentials: Credentials | None = None,
) -> None:
    """Serve in the foreground until interrupted, after printing base URLs and credentials.

    The credentials printed are the emulator's own fake ones, meant to be pasted into the app.
    """
    server = EmulatorServer(
        host,
        port,
        credentials,
        dashscope_accept_data_uri=dashscope_accept_data_uri,
        cloudflare_licence_agreed=cloudflare_licence_agreed,
    )

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve_forever(_announce))


def _announce(server: EmulatorServer) -> None:
    creds = server.credentials
    lines = [
        f"Provider emulators listening on {server.url}",
        *(f"  {vendor:<10} base URL {url}" for vendor, url in server.base_urls.items()),
        f"  cloudflare account id {creds.cloudflare_account_id}",
        f"  cloudflare api token  {creds.cloudflare_api_token}",
        f"  dashscope api key     {creds.dashscope_api_key}",
        f"  qianfan AK / SK       {creds.qianfan_ak} / {creds.qianfan_sk}",
        f"  control: {server.url}/_emulator/health | script | reset | requests",
        "  magic: type [[emu:error-after n=3]] in a prompt (providers/emulators/README.md)",
    ]
    print("\n".join(lines), flush=True)
