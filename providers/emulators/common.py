"""What the three vendor handlers share: options, body parsing, fault planning, bearer auth."""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from providers.emulators.faults import Fault, Plan, parse_magic
from providers.emulators.http import HttpRequest
from providers.emulators.state import Credentials, EmulatorState, RecordedRequest
from providers.emulators.stream import Reply

Handled = tuple[Reply, Plan]


@dataclass  # not frozen: a test may flip a named switch on a running emulator
class Options:
    credentials: Credentials
    dashscope_accept_data_uri: bool = False
    timestamps: bool = True
    image_fetch_timeout: float = 5.0
    image_hosts: frozenset[str] = frozenset({"127.0.0.1", "localhost", "::1"})
    max_image_bytes: int = 10 * 1024 * 1024
    # Assumptions no vendor document settles: named switches, both behaviours tested
    # (providers/emulators/README.md lists them).
    dashscope_multi_image: bool = False  # FAQ: no image lists; True accepts several per request
    qianfan_unknown_keys: str = "refuse"  # "refuse" (336003) or "ignore" body keys seed 003 lacks


class NotJson(Exception):
    pass


def parse_body(body: bytes) -> Any:
    """The JSON body, or `NotJson` when it is empty, not UTF-8 or not JSON."""
    if not body.strip():
        raise NotJson("empty body")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise NotJson("body is not JSON") from None


def try_parse(body: bytes) -> Any:
    try:
        return parse_body(body)
    except NotJson:
        return None


def make_plan(
    state: EmulatorState,
    rec: RecordedRequest,
    vendor: str,
    scripted: Sequence[Fault],
    user_text: str,
) -> Plan:
    """Scripted faults first, then the ``[[emu:...]]`` markers of the last user text."""
    magic, invalid = parse_magic(user_text)
    faults = [f for f in (*scripted, *magic) if f.applies_to(vendor)]
    plan = Plan.from_faults(faults)
    state.update(rec, faults=[*plan.kinds, *(f"invalid:{spec}" for spec in invalid)])
    return plan


def bearer_matches(req: HttpRequest, expected: str) -> bool:
    scheme, _, token = req.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), expected.encode())


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def retry_after_header(fault: Fault) -> list[tuple[str, str]]:
    """A ``retry-after`` header when the fault has a `retry_after` parameter."""
    if "retry_after" not in fault.params:
        return []
    return [("retry-after", fault.text("retry_after", "1"))]
