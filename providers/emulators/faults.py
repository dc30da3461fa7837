"""Scripted faults and the delivery plan they add up to.

A `Fault` is a kind plus a few parameters, e.g. ``Fault("error-after", n=3)``. Faults come from
two places: `EmulatorServer.script()` (or ``POST /_emulator/script``) and "magic" markers in the
last user text, ``[[emu:error-after n=3]]``. All faults that apply to one request are folded
into one `Plan`, which the vendor handlers and the delivery engine read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

VENDORS = ("cloudflare", "dashscope", "qianfan")

# Parameters every kind accepts: they only shape pacing, so they compose with anything.
_PACING = frozenset({"rate", "ttft"})

# kind -> the parameters it accepts (besides rate/ttft).
FAULT_PARAMS: dict[str, frozenset[str]] = {
    "ok": frozenset({"n"}),
    "tokens": frozenset({"n"}),
    "slow": frozenset({"n"}),
    "429-before": frozenset({"code", "message", "retry_after", "status"}),
    "quota-before": frozenset({"code", "message", "retry_after", "status"}),
    # A quota that never comes back: DashScope's free-trial-only model (FreeTierOnly),
    # Qianfan's free quota (19), Cloudflare's daily allocation (3036).
    "free-tier-before": frozenset({"code", "message", "status"}),
    "500-before": frozenset({"code", "message", "status"}),
    "auth-before": frozenset({"code", "message", "status"}),
    "error-after": frozenset({"n", "code", "message", "status"}),
    # ban_round (Qianfan): the flagged round, -1 (the current one) by default.
    "content-filter-after": frozenset({"n", "code", "message", "ban_round"}),
    # DashScope: at token n, one event whose cumulative text ends in a replacement character
    # instead of that token, corrected by the next event (a rewritten tail).
    "dashscope-rewrite": frozenset({"n"}),
    "dashscope-error-sse-as-json": frozenset({"code", "message", "status"}),
    "dashscope-200-error": frozenset({"code", "message", "status"}),
    "drop-after": frozenset({"n", "rst"}),
    "stall-after": frozenset({"n", "seconds"}),
    "no-terminator": frozenset(),
    "utf8-split": frozenset({"gap"}),
    "byte-by-byte": frozenset({"gap"}),
    "crlf": frozenset({"split"}),
    "cr": frozenset(),
    "comments": frozenset(),
    "multi-event-chunk": frozenset({"k"}),
    "huge-event": frozenset({"mb"}),
    "unknown-fields": frozenset(),
    "html": frozenset(),
    # Control characters in the text, NUL included: JSON may carry any of them ("\u0000"),
    # and nothing in a vendor's documents promises an answer without them.
    "control-chars": frozenset(),
    "verbatim": frozenset(),
    "no-space": frozenset(),
    "close-delimited": frozenset(),
}

# Faults that only make sense for one vendor's wire format.
VENDOR_ONLY: dict[str, str] = {
    "dashscope-error-sse-as-json": "dashscope",
    "dashscope-200-error": "dashscope",
    "dashscope-rewrite": "dashscope",
}

# Replace the whole answer with an error reply before any token is generated.
BEFORE_KINDS = frozenset(
    {
        "429-before",
        "quota-before",
        "free-tier-before",
        "500-before",
        "auth-before",
        "dashscope-error-sse-as-json",
        "dashscope-200-error",
    }
)
AFTER_KINDS = frozenset({"error-after", "content-filter-after"})

_MAGIC = re.compile(r"\[\[emu:([^\]]*)\]\]")
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")

ParamValue = int | float | str | bool


def _coerce(text: str) -> ParamValue:
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


class Fault:
    """One scripted misbehaviour: ``Fault("error-after", n=3, code=3040)``."""

    __slots__ = ("kind", "params")

    def __init__(self, kind: str, **params: ParamValue) -> None:
        if kind not in FAULT_PARAMS:
            raise ValueError(f"unknown emulator fault {kind!r}; known: {sorted(FAULT_PARAMS)}")
        unknown = set(params) - FAULT_PARAMS[kind] - _PACING
        if unknown:
            raise ValueError(f"fault {kind!r} takes no parameter(s) {sorted(unknown)}")
        for name, value in params.items():
            if not isinstance(value, int | float | str | bool):
                raise ValueError(f"fault parameter {name}={value!r} must be a number or string")
        self.kind = kind
        self.params: dict[str, ParamValue] = dict(params)
        # Fail at scripting time, not in the middle of a request.
        for name in ("n", "k", "status", "mb", "rate", "ttft", "seconds", "gap", "retry_after"):
            if name in self.params:
                self.number(name, 0)

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """``"error-after n=3 code=3040"`` -> ``Fault("error-after", n=3, code=3040)``."""
        words = spec.split()
        if not words:
            raise ValueError("empty fault spec")
        params: dict[str, ParamValue] = {}
        for word in words[1:]:
            name, sep, value = word.partition("=")
            if not sep or not name:
                raise ValueError(f"fault parameter {word!r} is not name=value")
            params[name] = _coerce(value)
        return cls(words[0], **params)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Fault:
        """``{"kind": "error-after", "n": 3}`` (the control endpoint's JSON form)."""
        params = {k: v for k, v in data.items() if k != "kind"}
        kind = data.get("kind")
        if not isinstance(kind, str):
            raise ValueError("fault needs a string 'kind'")
        return cls(kind, **params)

    def number(self, name: str, default: float) -> float:
        value = self.params.get(name, default)
        if isinstance(value, bool):
            return float(value)
        if isinstance(value, int | float):
            return float(value)
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"fault {self.kind!r}: {name}={value!r} is not a number") from None

    def integer(self, name: str, default: int) -> int:
        return int(self.number(name, default))

    def text(self, name: str, default: str) -> str:
        value = self.params.get(name)
        return default if value is None else str(value)

    def flag(self, name: str, default: bool) -> bool:
        value = self.params.get(name)
        if value is None:
            return default
        if isinstance(value, str):
            return value.lower() not in {"0", "false", "no", "off", ""}
        return bool(value)

    def applies_to(self, vendor: str) -> bool:
        only = VENDOR_ONLY.get(self.kind)
        return only is None or only == vendor

    def spec(self) -> str:
        """The magic-syntax form, e.g. ``error-after n=3``."""
        return " ".join([self.kind, *(f"{k}={v}" for k, v in self.params.items())])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fault) and (self.kind, self.params) == (other.kind, other.params)

    def __hash__(self) -> int:
        return hash((self.kind, tuple(sorted(self.params.items()))))

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"Fault({self.kind!r}{args})"


def parse_magic(text: str) -> tuple[list[Fault], list[str]]:
    """Faults named by ``[[emu:...]]`` markers in `text`, and the specs that did not parse."""
    faults: list[Fault] = []
    invalid: list[str] = []
    for match in _MAGIC.finditer(text):
        spec = match.group(1).strip()
        try:
            faults.append(Fault.parse(spec))
        except ValueError:
            invalid.append(spec)
    return faults, invalid


def strip_magic(text: str) -> str:
    return _MAGIC.sub("", text)


@dataclass
class Plan:
    """Everything the faults of one request decided, in one place."""

    n_tokens: int | None = None  # None: the answer's natural length (at least 12 tokens)
    rate: float | None = None  # tokens per second; None: as fast as possible
    ttft: float = 0.0
    before: Fault | None = None
    after: Fault | None = None
    after_n: int = 0
    drop_after: int | None = None
    rst: bool = False
    stall_after: int | None = None
    stall_seconds: float = 30.0
    no_terminator: bool = False
    huge_bytes: int = 0
    unknown_fields: bool = False
    html: bool = False
    control_chars: bool = False
    verbatim: bool = False  # answer with the user's own text (magic removed), token by token
    eol: bytes = b"\n"
    split_crlf: bool = False
    comments: bool = False
    no_space: bool = False
    group: int = 1
    byte_by_byte: bool = False
    utf8_split: bool = False
    gap: float = 0.0
    close_delimited: bool = False
    rewrite_at: int | None = None  # DashScope: a rewritten tail at this token
    kinds: list[str] = field(default_factory=list)

    @classmethod
    def from_faults(cls, faults: Iterable[Fault]) -> Plan:
        plan = cls()
        for fault in faults:
            plan._apply(fault)
        return plan

    @property
    def data_prefix(self) -> bytes:
        return b"data:" if self.no_space else b"data: "

    def generation_delay(self, tokens: int) -> float:
        """How long a non-stream answer of `tokens` tokens takes to "generate"."""
        if self.rate and tokens > 1:
            return self.ttft + (tokens - 1) / self.rate
        return self.ttft

    def _apply(self, fault: Fault) -> None:
        kind = fault.kind
        self.kinds.append(kind)
        if "rate" in fault.params:
            self.rate = fault.number("rate", 0) or None
        if "ttft" in fault.params:
            self.ttft = max(0.0, fault.number("ttft", 0))
        if kind in {"ok", "tokens", "slow"} and "n" in fault.params:
            self.n_tokens = max(0, fault.integer("n", 0))
        if kind == "slow" and "rate" not in fault.params:
            self.rate = 5.0
        if kind in BEFORE_KINDS and self.before is None:
            self.before = fault
        elif kind in AFTER_KINDS and self.after is None:
            self.after = fault
            self.after_n = max(0, fault.integer("n", 3))
        elif kind == "drop-after":
            self.drop_after = max(0, fault.integer("n", 3))
            self.rst = fault.flag("rst", False)
        elif kind == "stall-after":
            self.stall_after = max(0, fault.integer("n", 3))
            self.stall_seconds = max(0.0, fault.number("seconds", 30.0))
        elif kind == "no-terminator":
            self.no_terminator = True
        elif kind == "dashscope-rewrite":
            self.rewrite_at = max(1, fault.integer("n", 3))
        elif kind == "huge-event":
            self.huge_bytes = int(fault.number("mb", 5) * 1024 * 1024)
        elif kind == "unknown-fields":
            self.unknown_fields = True
        elif kind == "html":
            self.html = True
        elif kind == "control-chars":
            self.control_chars = True
        elif kind == "verbatim":
            self.verbatim = True
        elif kind == "crlf":
            self.eol = b"\r\n"
            self.split_crlf = fault.flag("split", True)
        elif kind == "cr":
            self.eol = b"\r"
        elif kind == "comments":
            self.comments = True
        elif kind == "no-space":
            self.no_space = True
        elif kind == "multi-event-chunk":
            self.group = max(2, fault.integer("k", 3))
        elif kind == "byte-by-byte":
            self.byte_by_byte = True
            self.gap = max(self.gap, fault.number("gap", 0))
        elif kind == "utf8-split":
            self.utf8_split = True
            self.gap = max(self.gap, fault.number("gap", 0))
        elif kind == "close-delimited":
            self.close_delimited = True
