"""The one interface every backend client implements.

Nothing here imports Django: clients are plain async code so they can run in the
server process, in a Celery worker, in benchmarks and in tests alike.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant", "tool"]


class ErrorKind(enum.StrEnum):
    """What the rest of the product can do about a failure."""

    AUTH = "auth"  # bad or revoked credentials: an admin must act
    QUOTA_EXHAUSTED = "quota_exhausted"  # will not clear by retrying (daily/free quota, arrears)
    RATE_LIMITED = "rate_limited"  # retry later, `retry_after` when known
    UNAVAILABLE = "unavailable"  # transient: 5xx, capacity, connection refused or dropped
    TIMEOUT = "timeout"  # connect or idle-read timeout (the provider stalled)
    BAD_REQUEST = "bad_request"  # our request is wrong; retrying the same request is useless
    CONTENT_FILTERED = "content_filtered"  # moderation refused input or output
    TRUNCATED = "truncated"  # stream ended without its terminator

    @property
    def retryable(self) -> bool:
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {ErrorKind.RATE_LIMITED, ErrorKind.UNAVAILABLE, ErrorKind.TIMEOUT, ErrorKind.TRUNCATED}
)


class ProviderError(Exception):
    """The single error type raised by every client.

    `message` is safe to show a user: it never contains a key, a token or a URL with
    a token in it.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        vendor_code: str | None = None,
        request_id: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        hint: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.vendor_code = vendor_code
        self.request_id = request_id
        self.status = status
        self.retry_after = retry_after
        # What the reader should do, when the client knows better than its kind's generic
        # advice (e.g. "this model's free trial is over", "SITE_URL must be reachable").
        self.hint = hint
        # Facts a caller may act on, e.g. {"flagged_messages": [2]}: indexes into
        # ChatRequest.messages of turns a vendor's moderation flagged.
        self.details: Mapping[str, Any] = details or {}

    @property
    def retryable(self) -> bool:
        return self.kind.retryable

    def __repr__(self) -> str:
        return (
            f"ProviderError(kind={self.kind.value!r}, vendor_code={self.vendor_code!r}, "
            f"status={self.status!r}, request_id={self.request_id!r}, message={self.message!r})"
        )


@dataclass(frozen=True)
class ImagePart:
    """One image in a user turn.

    `data` holds the re-encoded bytes (Cloudflare sends them inline); `url` is a signed,
    expiring URL the provider can fetch (DashScope only takes URLs).
    """

    data: bytes
    mime_type: str
    url: str | None = None


@dataclass(frozen=True)
class ToolCall:
    """One function call a model asked for. `arguments` is JSON text (OpenAI's form)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Tool:
    """A function the model may call: a name, what it does, a JSON-schema object."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True)
class Message:
    role: Role
    text: str
    images: tuple[ImagePart, ...] = ()
    # An assistant turn that called tools; a "tool" turn answers the call `tool_call_id`.
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True)
class ChatRequest:
    model: str  # the vendor's model id, e.g. "@cf/meta/llama-3.2-3b-instruct"
    messages: tuple[Message, ...]
    system: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    tools: tuple[Tool, ...] = ()  # only for a client that accepts tools (catalogue.TOOL_KINDS)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class Delta:
    """New text for the answer: drop the last `rewind` characters written so far, then append
    `text`. `rewind` is 0 except when a vendor's cumulative text stopped extending what it sent
    before (DashScope): the answer then continues from the common prefix."""

    text: str
    rewind: int = 0


@dataclass(frozen=True)
class Finish:
    """The last item of every successful stream."""

    reason: str  # "stop", "length", "content_filter", "tool_calls", ...
    usage: Usage | None = None
    request_id: str | None = None
    # The calls the model asked for instead of (or after) its text; reason "tool_calls".
    tool_calls: tuple[ToolCall, ...] = ()


StreamItem = Delta | Finish


class ProviderClient(Protocol):
    @property
    def kind(self) -> str: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamItem]: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class ProviderConfig:
    """What a client needs to reach one backend account."""

    kind: str  # "cloudflare" | "dashscope" | "qianfan"
    base_url: str
    credentials: Mapping[str, str]
    options: Mapping[str, Any] = field(default_factory=dict)
    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # idle time between two bytes of a stream


async def collect(items: AsyncIterator[StreamItem]) -> tuple[str, Finish]:
    """Drain a stream into (full text, Finish); what every client's `complete()` returns."""
    parts: list[str] = []
    finish: Finish | None = None
    async for item in items:
        if isinstance(item, Delta):
            parts.append(item.text)
        else:
            finish = item
    if finish is None:
        raise ProviderError(ErrorKind.TRUNCATED, "The answer ended without a finish marker.")
    return "".join(parts), finish
