"""Wire bytes per text byte of one answer's websocket frames, for two texts and two clients.

The relay benchmark's answers are the emulator's filler (a dozen words repeated), which a
compressor shrinks far more than real prose. This step measures the same frames for a realistic
answer too: a Markdown answer of about 1.75 KB in English prose with a heading, a list, a code
block and a table (`PROSE`), which the emulator says back token by token (its `verbatim` fault,
four characters a token, 50 tokens/s), next to a 500-token filler answer at 50 tokens/s.

Each text is streamed to a websocket that offers permessage-deflate (as every browser does)
and to one that offers nothing, on the embedded stack of bench/relay.py (one daphne, SQLite,
the app's 100 ms coalescing window). Counted: every frame of the conversation's socket from
the POST to the answer's final `state`; on the wire = the message's payload as sent
(compressed when deflate was agreed), text = the frame's JSON text. Split by kind: `d` (deltas),
`b` (rendered blocks), `other` (`new`, `state`).

    .venv/bin/python bench/wire.py                # 2 answers per cell, ~1.5 min
    .venv/bin/python bench/wire.py --answers 1

Output: a table on stdout and `bench/results/wire-<UTC time>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.relay import (  # the path above makes `bench` importable as a script
    AppClient,
    Frame,
    Slot,
    Stack,
    delivered_text,
    frame_kind,
    run_on_embedded_stack,
)

TARGET = 3.0  # issue 16: <= 3 wire bytes per text byte

PROSE = """\
## Rolling out the new cache safely

Short answer: yes, you can switch the session store to Redis without logging anyone out, as \
long as you run both stores side by side for one session lifetime. Here is the order I would \
follow, and why each step matters.

1. **Deploy the dual-read code first.** Reads look in Redis, then fall back to the database; \
writes go to both. Nothing changes for users yet, and you can roll back by flipping one flag.
2. **Watch the hit rate for a day.** It should climb towards 100% as people come back; a \
plateau well below that usually means some workers still run the old build.
3. **Stop writing to the database.** Keep the fallback read for another week, so sessions \
created before the switch still work until they expire.
4. **Remove the fallback** once the oldest session in the table is past its expiry date.

A minimal version of the read path, in Python:

```python
def load_session(key: str) -> dict | None:
    data = redis.get(f"session:{key}")
    if data is not None:
        return json.loads(data)
    row = Session.objects.filter(key=key, expires__gt=now()).first()
    return row.data if row else None
```

| step | risk | how to undo |
|---|---|---|
| dual read | low | turn the flag off |
| stop DB writes | medium | turn DB writes back on |
| remove fallback | low | redeploy the previous build |

Two things people often miss. First, the *expiry* must be the same in both stores, otherwise a \
session can outlive its logout in one of them. Second, if you rotate `SECRET_KEY` during the \
migration, every signed cookie becomes invalid at once, so keep that for another day.

If you tell me how many active sessions you have and how your workers are deployed, I can \
estimate how long step 2 should take.
"""


async def _stream(slot: Slot, text: str, timeout: float) -> tuple[list[Frame], int, str]:
    """The frames of one answer from its POST to its final state, its seq and its text."""
    slot.begin()
    response = await slot.app.post_message(slot.conversation, text)
    if response.status_code not in (200, 201):
        slot.end()
        raise RuntimeError(f"POST answered {response.status_code}")
    seq = int(response.json()["assistant"]["seq"])
    await asyncio.wait_for(slot.wait_terminal({seq}), timeout)
    frames = slot.end()
    if slot.terminal[seq] != "complete":
        raise RuntimeError(f"answer {seq} ended {slot.terminal[seq]}")
    return frames, seq, delivered_text(frames, seq)


def _cell(runs: list[tuple[list[Frame], str]]) -> dict[str, Any]:
    text_bytes = sum(len(text.encode()) for _frames, text in runs)
    wire: dict[str, int] = {}
    payload: dict[str, int] = {}
    for frames, _text in runs:
        for _t, size_wire, size_text, frame in frames:
            kind = frame_kind(frame)
            wire[kind] = wire.get(kind, 0) + size_wire
            payload[kind] = payload.get(kind, 0) + size_text
    return {"answers": len(runs), "text_bytes": text_bytes,
            "wire_bytes": sum(wire.values()), "payload_bytes": sum(payload.values()),
            "wire_per_text_byte": round(sum(wire.values()) / text_bytes, 3),
            "payload_per_text_byte": round(sum(payload.values()) / text_bytes, 3),
            "wire_per_text_byte_by_kind": {k: round(v / text_bytes, 3)
                                           for k, v in sorted(wire.items())},
            "frames": sum(len(frames) for frames, _text in runs)}


async def measure(stack: Stack, answers: int, timeout: float = 120.0) -> dict[str, Any]:
    transport = httpx.AsyncHTTPTransport()
    app = AppClient(stack.app_url, transport, stack.sessions[0])
    texts = {"prose": f"[[emu:verbatim rate=50 ttft=0]]{PROSE}",
             "filler": "Wire benchmark [[emu:tokens n=500 rate=50 ttft=0]]"}
    cells: dict[str, Any] = {}
    try:
        for offer in ("deflate", "none"):
            conversation = await app.new_conversation(
                stack.cfg.model, "Wire benchmark [[emu:tokens n=3 ttft=0]]")
            slot = await Slot.open(app, conversation, compression=offer)
            try:
                await asyncio.wait_for(slot.hello.wait(), timeout)
                await asyncio.wait_for(slot.wait_terminal(slot.active), timeout)
                agreed = bool(slot.ws.protocol.extensions)
                for name, text in texts.items():
                    runs = []
                    for _ in range(answers):
                        frames, _seq, delivered = await _stream(slot, text, timeout)
                        runs.append((frames, delivered))
                    cells[f"{name}/{offer}"] = {**_cell(runs), "text": name, "offer": offer,
                                                "deflate_agreed": agreed}
            finally:
                await slot.close()
    finally:
        await app.http.aclose()
        await transport.aclose()
    return {"answers_per_cell": answers, "target_max": TARGET, "cells": cells}


def table(result: dict[str, Any]) -> str:
    lines = [f"{'text':<7} {'client offers':<14} {'agreed':<7} {'text B':>7} {'wire B/B':>8} "
             f"{'frames B/B':>10}  {'wire by kind (d, b, other)':<28} verdict"]
    for cell in result["cells"].values():
        kinds = cell["wire_per_text_byte_by_kind"]
        by_kind = ", ".join(f"{kinds.get(k, 0):.2f}" for k in ("d", "b", "other"))
        verdict = "pass" if cell["wire_per_text_byte"] <= TARGET else "FAIL"
        lines.append(f"{cell['text']:<7} {cell['offer']:<14} {cell['deflate_agreed']!s:<7} "
                     f"{cell['text_bytes'] // cell['answers']:>7} "
                     f"{cell['wire_per_text_byte']:>8.2f} {cell['payload_per_text_byte']:>10.2f}"
                     f"  {by_kind:<28} {verdict}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/wire.py", description=__doc__.split("\n")[0])
    parser.add_argument("--answers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args(argv)
    if args.answers < 1:
        parser.error("need --answers >= 1")
    ran = run_on_embedded_stack("wire", args.json, args.no_pin,
                                lambda stack: measure(stack, args.answers))
    if ran is None:
        return 1
    print(table(ran[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
