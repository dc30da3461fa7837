"""`make bench`: every benchmark of docs/performance.md in one run, one table, one JSON file.

Runs, one after the other (each starts and stops its own processes):

1. relay     bench/relay.py        A0/A1/A2 interleaved at K = 1, 10, 100 (Redis stack)
2. capacity  bench/relay.py        --capacity: K = 1, 2, 4 ... on the text arm
3. bare      bench/bare_relay.py   the bare `websockets` relay of the same SSE (CPU baseline)
4. memory    bench/memory.py       per idle and active socket; 500 cancelled streams
5. pages     bench/pages.py        the conversation page at 10 / 100 / 1,000 messages

Each script prints its own detailed table (on stderr here) and writes its JSON; this script
then prints one summary table against the targets and writes `bench/results/bench-<time>.json`
holding the summary and every script's JSON. `--quick` runs small versions (a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
STEPS = ("relay", "capacity", "bare", "memory", "pages")


def _argv(step: str, quick: bool, out: Path) -> list[str]:
    py = [sys.executable]
    quick_flag = ["--quick"] if quick else []
    return {
        "relay": [*py, "bench/relay.py", *quick_flag, "--arms", "A0,A1,A2"]
        + ([] if quick else ["--k", "1,10,100", "--repeat", "3"]),
        "capacity": [*py, "bench/relay.py", "--capacity", "--a0-client", "raw", "--arms",
                     "A0,A1", "--k-max", "8" if quick else "1024",
                     "--repeat", "1" if quick else "2"]
        + (["--tokens", "100"] if quick else []),
        "bare": [*py, "bench/bare_relay.py", *quick_flag, "--client", "httpx,raw"]
        + ([] if quick else ["--k", "1,10,100"]),
        "memory": [*py, "bench/memory.py", *quick_flag],
        "pages": [*py, "bench/pages.py", *quick_flag],
    }[step] + ["--json", str(out)]


def run_step(step: str, quick: bool, stamp: str) -> dict[str, Any]:
    out = RESULTS / f"{step}-{stamp}.json"
    started = time.monotonic()
    print(f"== {step}: {' '.join(_argv(step, quick, out)[1:])}", file=sys.stderr, flush=True)
    done = subprocess.run(_argv(step, quick, out), cwd=ROOT, stdout=sys.stderr, check=False)
    wall = round(time.monotonic() - started, 1)
    if not out.exists():
        return {"ok": False, "exit": done.returncode, "wall_s": wall, "json": None}
    return {"ok": done.returncode == 0, "exit": done.returncode, "wall_s": wall,
            "json": str(out), "result": json.loads(out.read_text())}


# --- reading the results -----------------------------------------------------------------------
def _get(data: Any, *path: Any) -> Any:
    for key in path:
        if isinstance(data, dict):
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def _level(relay: Any, k: int) -> Any:
    return next((lv for lv in _get(relay, "levels") or [] if lv.get("k") == k), None)


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("pass" if ok else "FAIL")


Row = tuple[str, str, str, bool | None]


def relay_rows(relay: Any) -> list[Row]:
    rows: list[Row] = []
    one, hundred = _level(relay, 1), _level(relay, 100) or _level(relay, 10)
    for arm in ("A1", "A2"):
        added = _get(one, "added_by_arm", arm) or (_get(one, "added") if arm == "A1" else None)
        if added is None:
            continue
        p50 = _get(added, "added_ttft_ms", "p50")
        p99 = _get(added, "added_ttft_ms", "p99")
        at_ts = _get(added, "added_ttft_from_first_ts_ms", "p50")
        rows.append((f"{arm} added TTFT p50/p99, K=1 (from POST)",
                     f"{_fmt(p50, ' ms')} / {_fmt(p99, ' ms')}", "<= 5 / 20 ms",
                     None if p50 is None else p50 <= 5 and p99 <= 20))
        rows.append((f"{arm} added TTFT p50, K=1 (relay only, from first token)",
                     _fmt(at_ts, " ms"), "-", None))
        wire = _get(added, "wire_per_text_byte")
        rows.append((f"{arm} wire bytes per text byte", _fmt(wire, "", 2), "<= 3",
                     None if wire is None else wire <= 3))
        fps = _get(added, "frames_per_s", "max")
        rows.append((f"{arm} frames/s per stream (max)", _fmt(fps), "<= 20",
                     None if fps is None else fps <= 20.5))
    k = _get(hundred, "k")
    added = _get(hundred, "added")
    if added:
        p99 = _get(added, "added_ttft_from_first_ts_ms", "p99")
        tok = _get(added, "added_token_delay_beyond_window_ms", "p99")
        rows.append((f"A1 added TTFT@ts p99, K={k}", _fmt(p99, " ms"), "<= 50 ms",
                     None if p99 is None else p99 <= 50))
        rows.append((f"A1 added token delay p99 beyond window, K={k}", _fmt(tok, " ms"),
                     "<= 25 ms", None if tok is None else tok <= 25))
    return rows


def capacity_rows(relay: Any) -> list[Row]:
    result = _get(relay, "capacity", "result", "A1")
    if not result:
        return []
    cap = result.get("capacity")
    why = "; ".join(result.get("reasons") or [])
    levels = _get(relay, "capacity", "levels") or []
    at_cap = next((lv for lv in levels if lv.get("k") == cap), None)
    failed = result.get("first_failing_k")
    limit = (f"K={failed} failed: {why}" if failed else
             f"no level failed up to --k-max {_get(relay, 'capacity', 'k_max')}")
    rows: list[Row] = [(f"capacity, streams at 50 tok/s ({limit})", _fmt(cap), ">= 500",
                        None if cap is None else cap >= 500)]
    cpu = _get(at_cap, "arms", "A1", "app_cpu_us_per_token")
    rows.append((f"app CPU per token at K={cap}", _fmt(cpu, " us"), "-", None))
    return rows


def bare_rows(bare: Any, relay: Any) -> list[Row]:
    rows: list[Row] = []
    levels = _get(bare, "levels") or []
    for k in (10, 100):
        base = next((lv for lv in levels if lv.get("k") == k and lv.get("client") == "httpx"),
                    None)
        app = _get(_level(relay, k), "arms", "A1", "app_cpu_us_per_token")
        bare_us = _get(base, "relay_cpu_us_per_token")
        if base is None or app is None or not bare_us:
            continue
        ratio = app / bare_us
        rows.append((f"CPU per token, app / bare websockets relay (httpx), K={k}",
                     f"{app:.0f} / {bare_us:.0f} us = {ratio:.1f}x", "<= 3x", ratio <= 3))
    return rows


def memory_rows(memory: Any) -> list[Row]:
    rows: list[Row] = []
    for mode, modes in (_get(memory, "modes") or {}).items():
        idle = _get(modes, "idle", "rss_kib", "slope")
        active = _get(modes, "active", "rss_kib", "slope")
        rows.append((f"RSS per idle websocket ({mode})", _fmt(idle, " KiB"), "<= 64 KiB",
                     None if idle is None else idle <= 64))
        rows.append((f"RSS per active stream ({mode})", _fmt(active, " KiB"), "<= 256 KiB",
                     None if active is None else active <= 256))
        back = _get(modes, "cancelled", "verdict")
        if isinstance(back, dict):
            rows.append((f"back to baseline after cancelled streams ({mode})",
                         str(back.get("summary", back.get("pass"))), "+/- 5 %",
                         back.get("pass")))
    return rows


def pages_rows(pages: Any) -> list[Row]:
    rows: list[Row] = []
    for endpoint in ("page", "thread", "older"):
        target = _get(pages, "targets", endpoint)
        if not target:
            continue
        queries = target.get("queries")
        rows.append((f"{endpoint}: queries at 10/100/1,000 messages", _fmt(queries),
                     "same, <= 10", bool(target.get("queries_constant")
                                         and target.get("queries_within_max"))))
        ratio, same = target.get("p50_ratio"), target.get("same_page_ratio")
        rows.append((f"{endpoint}: p50 1,000 / 10 messages (1,000 / 100: {_fmt(same, 'x', 2)})",
                     _fmt(ratio, "x", 2), "<= 2x", target.get("p50_ratio_within_max")))
    return rows


def summarise(steps: dict[str, dict[str, Any]]) -> list[Row]:
    result: Callable[[str], Any] = lambda name: _get(steps, name, "result")  # noqa: E731
    rows = relay_rows(result("relay")) + capacity_rows(result("capacity"))
    rows += bare_rows(result("bare"), result("relay")) + memory_rows(result("memory"))
    rows += pages_rows(result("pages"))
    for name, step in steps.items():
        if not step.get("ok"):
            rows.append((f"{name}: the script failed (exit {step.get('exit')})", "-", "-",
                         False))
    return rows


def render(rows: list[Row]) -> str:
    width = max([len(r[0]) for r in rows] + [6])
    lines = [f"{'metric':<{width}}  {'measured':>24}  {'target':>14}  verdict"]
    lines += [f"{name:<{width}}  {value:>24}  {target:>14}  {_verdict(ok)}"
              for name, value, target, ok in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small versions: a few minutes")
    parser.add_argument("--only", default=",".join(STEPS),
                        help=f"comma-separated steps to run (default {','.join(STEPS)})")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(STEPS))
    if unknown:
        parser.error(f"unknown steps: {', '.join(unknown)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    steps = {step: run_step(step, args.quick, stamp) for step in chosen}
    rows = summarise(steps)
    table = render(rows)
    print(table)
    out = RESULTS / f"bench-{stamp}.json"
    out.write_text(json.dumps({
        "started": stamp, "quick": args.quick, "loadavg": os.getloadavg(),
        "summary": [{"metric": n, "measured": v, "target": t, "pass": ok}
                    for n, v, t, ok in rows],
        "steps": steps}, indent=1))
    print(f"\nJSON: {out}")
    return 0 if all(step.get("ok") for step in steps.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
