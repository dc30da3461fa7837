"""Warm vendor connections (issue 16): new TCP connections to one vendor for N sequential
answers from one daphne process.

Starts the embedded stack of bench/relay.py (emulator + one daphne, SQLite), signs in one
user, and sends N answers one after the other through the web path (A1: the first by
`POST /c/new/`, the others by `POST /c/<id>/messages/` on the same conversation, each awaited
to its final state on the conversation's websocket). The emulator's `GET /_emulator/requests`
reports `"connections": {"cloudflare": n, "dashscope": n, "qianfan": n, "total": n}` (TCP
connections that carried at least one request for that vendor); it is read before the first
answer and after the last, and the difference is the result. An emulator without that key
gives `null` (the table prints "-"): the script does not guess.

    .venv/bin/python bench/connections.py               # 50 answers, ~30 s
    .venv/bin/python bench/connections.py --answers 10  # fewer

Output: a table on stdout and `bench/results/connections-<UTC time>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.relay import (  # the path above makes `bench` importable as a script
    AppClient,
    Slot,
    Stack,
    run_on_embedded_stack,
)

VENDOR = "cloudflare"  # the text model's vendor
TARGET = 2  # issue 16: <= 2 new connections for 50 sequential answers


async def _counts(emu: httpx.AsyncClient) -> tuple[dict[str, int] | None, int]:
    """The emulator's connection counts (None when it has none) and its recorded requests to
    the vendor (model calls, and a title's or a token's call: each one may open a connection)."""
    reply = await emu.get("/_emulator/requests", params={"vendor": VENDOR})
    reply.raise_for_status()
    body = reply.json()
    counts = body.get("connections")
    return (dict(counts) if isinstance(counts, dict) else None), len(body.get("requests", []))


async def _answer(slot: Slot, text: str, timeout: float) -> str:
    """One message on the slot's conversation, awaited to its final state."""
    response = await slot.app.post_message(slot.conversation, text)
    if response.status_code not in (200, 201):
        return f"post_{response.status_code}"
    seq = int(response.json()["assistant"]["seq"])
    await asyncio.wait_for(slot.wait_terminal({seq}), timeout)
    return slot.terminal[seq]


async def measure(stack: Stack, answers: int, timeout: float = 60.0) -> dict[str, Any]:
    transport = httpx.AsyncHTTPTransport()
    app = AppClient(stack.app_url, transport, stack.sessions[0])
    emu = httpx.AsyncClient(base_url=stack.emu_url, timeout=30.0)
    statuses: dict[str, int] = {}
    try:
        before, requests_before = await _counts(emu)
        started = time.monotonic()
        prompt = "Connection benchmark #bench-conn-{} [[emu:tokens n=5 ttft=0]]"
        conversation = await app.new_conversation(stack.cfg.model, prompt.format(0))
        slot = await Slot.open(app, conversation)
        try:
            await asyncio.wait_for(slot.hello.wait(), timeout)
            await asyncio.wait_for(slot.wait_terminal(slot.active), timeout)
            statuses["complete"] = 1  # the first answer, of POST /c/new/
            for index in range(1, answers):
                status = await _answer(slot, prompt.format(index), timeout)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            await slot.close()
        wall = time.monotonic() - started
        after, requests_after = await _counts(emu)
    finally:
        await emu.aclose()
        await app.http.aclose()
        await transport.aclose()
    new = ({key: after.get(key, 0) - before.get(key, 0) for key in after}
           if before is not None and after is not None else None)
    return {"answers": answers, "vendor": VENDOR, "before": before, "after": after,
            "new_connections": new,
            "new_vendor_connections": None if new is None else new.get(VENDOR),
            "vendor_requests": requests_after - requests_before, "target_max": TARGET,
            "statuses": statuses, "wall_s": round(wall, 2)}


def table(result: dict[str, Any]) -> str:
    value = result["new_vendor_connections"]
    shown = "-" if value is None else str(value)
    verdict = "-" if value is None else ("pass" if value <= TARGET else "FAIL")
    note = "" if value is not None else "  (the emulator reports no \"connections\")"
    return (f"new TCP connections to {result['vendor']} for {result['answers']} sequential "
            f"answers: {shown} (target <= {TARGET}) {verdict}{note}\n"
            f"requests to {result['vendor']}: {result['vendor_requests']}\n"
            f"answer statuses: {result['statuses']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/connections.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--answers", type=int, default=50)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args(argv)
    if args.answers < 1:
        parser.error("need --answers >= 1")
    ran = run_on_embedded_stack("connections", args.json, args.no_pin,
                                lambda stack: measure(stack, args.answers))
    if ran is None:
        return 1
    result, _path = ran
    print(table(result))
    bad = sum(n for status, n in result["statuses"].items() if status != "complete")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
