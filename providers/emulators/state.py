"""Shared, thread-safe emulator state: credentials, scripts, recordings, tokens, licences.

The server's event loop runs in its own thread while tests script faults and read recordings
from theirs, so every access goes through one lock. Critical sections are tiny.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from providers.emulators.faults import VENDORS, Fault

MASKED_HEADERS = frozenset(
    {"authorization", "x-api-key", "api-key", "cookie", "proxy-authorization"}
)
MASKED_QUERY = frozenset({"access_token", "client_id", "client_secret", "api_key", "key", "token"})


@dataclass(frozen=True)
class Credentials:
    """The only credentials the emulator accepts. Secrets stay out of repr (threat T15)."""

    cloudflare_account_id: str = "0123456789abcdef0123456789abcdef"
    cloudflare_api_token: str = field(default="cf-emu-token-0001", repr=False)
    dashscope_api_key: str = field(default="sk-emu-dashscope-0001", repr=False)
    qianfan_ak: str = field(default="emu-qianfan-ak", repr=False)
    qianfan_sk: str = field(default="emu-qianfan-sk", repr=False)


@dataclass
class RecordedRequest:
    """One request as the emulator saw it. `t` is `time.monotonic()` at arrival.

    `json` is shared with the server, not copied (image byte arrays can be megabytes): treat it
    as read-only.
    """

    vendor: str  # "cloudflare" | "dashscope" | "qianfan" | "unknown"
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    t: float
    endpoint: str = "model"  # "model" | "token" | "other"
    body_size: int = 0
    faults: list[str] = field(default_factory=list)  # fault kinds applied to this request
    image_bytes: list[int] = field(default_factory=list)  # size of each image received/fetched
    sent_text: str = ""  # answer text written to the socket (streams), for "nothing lost" tests
    status: int | None = None  # response status, once the response started
    outcome: str = "pending"  # complete | dropped | stalled | client-closed | pending

    def __repr__(self) -> str:
        # Short, and without header or query values: they hold credentials (threat T15).
        return (
            f"RecordedRequest(vendor={self.vendor!r}, method={self.method!r}, "
            f"path={self.path!r}, endpoint={self.endpoint!r}, faults={self.faults!r}, "
            f"status={self.status!r}, outcome={self.outcome!r})"
        )

    def copy(self) -> RecordedRequest:
        return dataclasses.replace(
            self,
            query=dict(self.query),
            headers=dict(self.headers),
            faults=list(self.faults),
            image_bytes=list(self.image_bytes),
        )

    def public(self) -> dict[str, Any]:
        """JSON-safe form for ``GET /_emulator/requests``: secrets reduced to their last 4
        characters, huge values elided."""
        return {
            "vendor": self.vendor,
            "method": self.method,
            "path": self.path,
            "query": {k: mask(v) if k in MASKED_QUERY else v for k, v in self.query.items()},
            "headers": {k: _mask_header(k, v) for k, v in self.headers.items()},
            "json": _elide(self.json),
            "t": self.t,
            "endpoint": self.endpoint,
            "body_size": self.body_size,
            "faults": list(self.faults),
            "image_bytes": list(self.image_bytes),
            "status": self.status,
            "outcome": self.outcome,
        }


def mask(secret: str) -> str:
    return "****" + secret[-4:] if len(secret) > 4 else "****"


def _mask_header(name: str, value: str) -> str:
    if name not in MASKED_HEADERS:
        return value
    scheme, sep, rest = value.partition(" ")
    if sep and scheme.lower() in {"bearer", "basic", "token"}:
        return f"{scheme} {mask(rest)}"
    return mask(value)


def _elide(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _elide(v) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) > 64:
            return f"<list of {len(value)} items>"
        return [_elide(v) for v in value]
    if isinstance(value, str) and len(value) > 2000:
        return f"{value[:200]}...<{len(value)} chars>"
    return value


@dataclass
class _Script:
    faults: tuple[Fault, ...]
    remaining: int | None  # None: forever (until reset)


class EmulatorState:
    def __init__(
        self, credentials: Credentials, *, cloudflare_agreed: bool, max_recorded: int
    ) -> None:
        self.credentials = credentials
        self._initially_agreed = cloudflare_agreed
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[_Script]] = {v: deque() for v in VENDORS}
        self._requests: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self._calls: Counter[str] = Counter()
        self._connections: Counter[str] = Counter()  # "" counts every accepted connection
        self._agreed: set[str] = set()
        self._tokens: dict[str, bool] = {}  # access token -> expired?
        self.reset()

    # --- scripts ---------------------------------------------------------------------------
    def script(self, vendor: str, faults: Sequence[Fault], times: int | None) -> None:
        if vendor not in self._scripts:
            raise ValueError(f"unknown vendor {vendor!r}; known: {list(VENDORS)}")
        for fault in faults:
            if not fault.applies_to(vendor):
                raise ValueError(f"fault {fault.kind!r} does not apply to {vendor}")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 (or None for every request)")
        with self._lock:
            self._scripts[vendor].append(_Script(tuple(faults), times))

    def take_script(self, vendor: str) -> tuple[Fault, ...]:
        """The faults for the next model call to `vendor` (and count that call)."""
        with self._lock:
            self._calls[vendor] += 1
            queue = self._scripts[vendor]
            if not queue:
                return ()
            head = queue[0]
            if head.remaining is not None:
                head.remaining -= 1
                if head.remaining <= 0:
                    queue.popleft()
            return head.faults

    # --- recordings ------------------------------------------------------------------------
    def record(self, request: RecordedRequest) -> RecordedRequest:
        with self._lock:
            self._requests.append(request)
        return request

    def update(self, request: RecordedRequest, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(request, name, value)

    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r.copy() for r in self._requests]

    def calls(self, vendor: str) -> int:
        with self._lock:
            return self._calls[vendor]

    def all_calls(self) -> dict[str, int]:
        with self._lock:
            return {v: self._calls[v] for v in VENDORS}

    # --- TCP connections (keep-alive reuse is asserted on these) -----------------------------
    def count_connection(self, vendor: str | None) -> None:
        with self._lock:
            self._connections[vendor or ""] += 1

    def connections(self, vendor: str | None = None) -> int:
        with self._lock:
            return self._connections[vendor or ""]

    def all_connections(self) -> dict[str, int]:
        with self._lock:
            return {**{v: self._connections[v] for v in VENDORS}, "total": self._connections[""]}

    # --- Cloudflare licence gate -----------------------------------------------------------
    def agreed(self, account: str) -> bool:
        with self._lock:
            return account in self._agreed

    def set_agreed(self, account: str, agreed: bool) -> None:
        with self._lock:
            if agreed:
                self._agreed.add(account)
            else:
                self._agreed.discard(account)

    # --- Qianfan access tokens -------------------------------------------------------------
    def issue_token(self) -> str:
        # Shaped like Baidu's: "24.<32 hex>.2592000.<unix time>.<digits>-<app id>".
        app_id = f"{secrets.randbelow(10**8):08d}"
        token = f"24.{secrets.token_hex(16)}.2592000.{int(time.time())}.282335-{app_id}"
        with self._lock:
            self._tokens[token] = False
        return token

    def token_state(self, token: str) -> str:
        """ "valid", "expired" or "unknown"."""
        with self._lock:
            expired = self._tokens.get(token)
        if expired is None:
            return "unknown"
        return "expired" if expired else "valid"

    def expire_tokens(self) -> None:
        with self._lock:
            for token in self._tokens:
                self._tokens[token] = True

    # --- reset -----------------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            for queue in self._scripts.values():
                queue.clear()
            self._requests.clear()
            self._calls.clear()
            self._connections.clear()
            # Issued access tokens stay valid (a real vendor's do not die when a test resets
            # its scripts): a server process that cached one must not pay a refresh and a
            # second model call in the next test. expire_tokens() is the explicit way.
            self._agreed.clear()
            if self._initially_agreed:
                self._agreed.add(self.credentials.cloudflare_account_id)
