"""CPU per relayed event of the embedded channel layer: Channels' `InMemoryChannelLayer` against
ours (`chatsite.layers.RateLimitedCleanupLayer`), in one process, the same events.

One event is what a streaming answer publishes per flush: a `group_send` of a delta to the
conversation's group, and each member's `receive` of it (a member is an open tab). CPU time
(`time.process_time`) over N events, best of three, per member count.

    .venv/bin/python bench/layer.py               # 20,000 events, 1 and 3 members
    .venv/bin/python bench/layer.py --events 5000

Output: a table on stdout and `bench/results/layer-<UTC time>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

import django

django.setup()

from channels.layers import InMemoryChannelLayer  # noqa: E402

from chatsite.layers import RateLimitedCleanupLayer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LAYERS: dict[str, type[InMemoryChannelLayer]] = {
    "upstream": InMemoryChannelLayer, "ours": RateLimitedCleanupLayer}


async def _relay(layer_class: type[InMemoryChannelLayer], events: int, members: int) -> float:
    """CPU microseconds per event: group_send to `members` channels, each received."""
    layer = layer_class()
    channels = [await layer.new_channel() for _ in range(members)]
    for channel in channels:
        await layer.group_add("conversation", channel)

    async def reader(channel: str) -> None:
        for _ in range(events):
            await layer.receive(channel)

    readers = [asyncio.create_task(reader(channel)) for channel in channels]
    await asyncio.sleep(0)
    started = time.process_time()
    for index in range(events):
        await layer.group_send("conversation", {"type": "msg.delta", "seq": 3,
                                                "offset": index * 20, "text": " lorem ipsum"})
        if index % 4 == 0:  # readers keep up, as consumers do between flushes
            await asyncio.sleep(0)
    await asyncio.gather(*readers)
    return (time.process_time() - started) / events * 1e6


def measure(events: int, members: Sequence[int]) -> dict[str, Any]:
    rows = []
    for count in members:
        row: dict[str, Any] = {"members": count}
        for name, layer_class in LAYERS.items():
            row[f"{name}_us_per_event"] = round(min(
                asyncio.run(_relay(layer_class, events, count)) for _ in range(3)), 2)
        rows.append(row)
    return {"events": events, "rows": rows}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/layer.py", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error("need --events >= 1")
    result = measure(args.events, (1, 3))
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = (args.json or RESULTS / f"layer-{stamp}.json").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"{'members':>7} {'upstream us/event':>17} {'ours us/event':>13}")
    for row in result["rows"]:
        print(f"{row['members']:>7} {row['upstream_us_per_event']:>17.1f} "
              f"{row['ours_us_per_event']:>13.1f}")
    print(f"JSON: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
