"""`make bench`: every benchmark of docs/performance.md in one run, one table, one JSON file.

Runs, one after the other (each starts and stops its own processes):

1. relay       bench/relay.py        A0/A1/A2 interleaved at K = 1, 32, 100 (Redis stack)
2. ttft        bench/relay.py        A0/A1 at K=1, many short answers (embedded stack)
3. ttft-redis  bench/relay.py        the same on the Redis stack (PostgreSQL + Redis + worker)
4. load        bench/relay.py        A0/A1 at K = 32, 64, 100, starts over 1 s (embedded):
                                     the POST burst (K=64) and CPU per token (K=32, 100)
5. capacity    bench/relay.py        --capacity: K = 1, 2, 4 ... on the text arm
6. bare        bench/bare_relay.py   the bare `websockets` relay of the same SSE (CPU baseline)
7. connections bench/connections.py  new TCP connections to the vendor for 50 answers
8. memory      bench/memory.py       per idle and active socket; 500 cancelled streams
9. pages       bench/pages.py        the conversation page at 10 / 100 / 1,000 messages
10. floor      bench/floor.py        what daphne, Django and the middleware add to the first
                                     token with no product code (the 5 ms target's floor)

The `/v1` comparison with Open WebUI is not a step (it installs Open WebUI: `make bench-peer`);
its latest `bench/results/peer-*.json` is read for the summary when present.

Each script prints its own detailed table (on stderr here) and writes its JSON; this script
then prints one summary table against the targets (issue 16's rows first) and writes
`bench/results/bench-<time>.json` holding the summary and every script's JSON. `--quick` runs
small versions (a few minutes): their rows say what they did not measure.
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
STEPS = ("relay", "ttft", "ttft-redis", "load", "capacity", "bare", "connections", "wire",
         "layer", "memory", "pages", "floor")
# The stream the CPU comparison runs, the same in the app's arm (load) and the bare relay.
CPU_STREAM = {"full": ["--tokens", "500", "--rate", "50"], "quick": ["--tokens", "60",
                                                                      "--rate", "50"]}
CPU_KS = {"full": "32,100", "quick": "32"}


def _argv(step: str, quick: bool, out: Path) -> list[str]:
    py = [sys.executable]
    quick_flag = ["--quick"] if quick else []
    size = "quick" if quick else "full"
    # K=1 TTFT: short answers (the first token is what counts), enough of them for a p99.
    ttft = ["--k", "1", "--tokens", "20", "--rate", "50", "--repeat", "10" if quick else "200"]
    return {
        "relay": [*py, "bench/relay.py", *quick_flag, "--arms", "A0,A1,A2"]
        + ([] if quick else ["--k", "1,32,100", "--repeat", "3"]),
        "ttft": [*py, "bench/relay.py", "--arms", "A0,A1", "--stack", "embedded", *ttft,
                 "--var-dir", str(RESULTS / "var-ttft")],
        "ttft-redis": [*py, "bench/relay.py", "--arms", "A0,A1", "--stack", "redis", *ttft,
                       "--var-dir", str(RESULTS / "var-ttft-redis")],
        # K=64: 64 POSTs over 1 s while the first ones' tokens already flow (the burst of issue
        # 16); K=32 and 100: the app's CPU per token against the bare relay on the same stream.
        "load": [*py, "bench/relay.py", "--arms", "A0,A1", "--stack", "embedded",
                 "--k", ",".join(sorted({*CPU_KS[size].split(","), "64"}, key=int)),
                 "--spread", "1", "--repeat", "1" if quick else "2",
                 *CPU_STREAM[size], "--var-dir", str(RESULTS / "var-load")],
        "capacity": [*py, "bench/relay.py", "--capacity", "--a0-client", "raw", "--arms",
                     "A0,A1", "--k-max", "8" if quick else "1024",
                     "--repeat", "1" if quick else "2"]
        + (["--tokens", "100"] if quick else []),
        "bare": [*py, "bench/bare_relay.py", "--client", "httpx,raw", "--k",
                 CPU_KS[size], "--spread", "1", *CPU_STREAM[size]],
        "connections": [*py, "bench/connections.py", "--answers", "50"],
        "wire": [*py, "bench/wire.py", "--answers", "1" if quick else "2"],
        "layer": [*py, "bench/layer.py", "--events", "5000" if quick else "20000"],
        "memory": [*py, "bench/memory.py", *quick_flag],
        "pages": [*py, "bench/pages.py", *quick_flag],
        "floor": [*py, "bench/floor.py", "--rounds", "20" if quick else "200"],
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


def _stream_note(relay: Any) -> str:
    tokens, rate = _get(relay, "config", "tokens"), _get(relay, "config", "rate")
    return f"{tokens} tok at {rate:g}/s" if tokens and rate else "?"


# --- issue 16's table: one row per target ------------------------------------------------------
def ttft_row(relay: Any, stack: str) -> Row:
    added = _get(_level(relay, 1), "added_by_arm", "A1")
    p50 = _get(added, "added_ttft_ms", "p50")
    p99 = _get(added, "added_ttft_ms", "p99")
    n = _get(_level(relay, 1), "arms", "A1", "ok")
    return (f"added TTFT from POST p50/p99, K=1, {stack} stack (n={_fmt(n)})",
            f"{_fmt(p50, ' ms')} / {_fmt(p99, ' ms')}", "<= 5 / 20 ms",
            None if p50 is None or p99 is None else p50 <= 5 and p99 <= 20)


FLOOR_ARMS = (("D", "daphne, bare ASGI"), ("DJ", "+ Django handler"),
              ("MW", "+ the product's middleware, signed in"), ("A1", "the product"))


def floor_rows(floor: Any) -> list[Row]:
    """bench/floor.py: the added TTFT of arms with less and less of the stack, same run; no
    target of their own, they show how much of the 5 ms the layers below the product take."""
    if floor is None:
        return []
    rows: list[Row] = []
    for arm, label in FLOOR_ARMS:
        row = _get(floor, "arms", arm)
        rows.append((f"floor: added TTFT p50/p99, K=1, {label} (n={_fmt(_get(row, 'n'))})",
                     f"{_fmt(_get(row, 'added_p50_ms'), ' ms', 2)} / "
                     f"{_fmt(_get(row, 'added_p99_ms'), ' ms', 2)}", "-", None))
    return rows


def post_burst_row(load: Any) -> Row:
    post = _get(_level(load, 64), "arms", "A1", "post_response_ms")
    p50, p99 = _get(post, "p50"), _get(post, "p99")
    return (f"POST latency p50/p99, 64 POSTs within 1 s (n={_fmt(_get(post, 'n'))})",
            f"{_fmt(p50, ' ms')} / {_fmt(p99, ' ms')}", "p99 <= 100 ms",
            None if p99 is None else p99 <= 100)


def capacity_row(relay: Any) -> Row:
    result = _get(relay, "capacity", "result", "A1")
    cap = _get(result, "capacity")
    failed = _get(result, "first_failing_k")
    why = "; ".join(_get(result, "reasons") or [])
    k_max = _get(relay, "capacity", "k_max")
    limit = (f"K={failed} failed: {why}" if failed else
             f"no level failed up to --k-max {k_max}" if result else "not run")
    # A --k-max below the target cannot show the target met: no verdict then.
    judged = cap is not None and (failed is not None or (k_max or 0) >= 128 or cap >= 128)
    return (f"capacity per daphne, R=50 tok/s, starts over 1 s ({limit})", _fmt(cap),
            ">= 128", (cap >= 128) if judged else None)


def cpu_rows(load: Any, bare: Any) -> list[Row]:
    rows: list[Row] = []
    levels = _get(bare, "levels") or []
    for k in (32, 100):
        base = next((lv for lv in levels if lv.get("k") == k and lv.get("client") == "httpx"),
                    None)
        app = _get(_level(load, k), "arms", "A1", "app_cpu_us_per_token")
        bare_us = _get(base, "relay_cpu_us_per_token")
        name = f"CPU per token, app / bare httpx relay, K={k}"
        if app is None or not bare_us:
            why = "not measured" + (" (--quick)" if load is not None and bare is not None
                                    else "")
            rows.append((name, f"{_fmt(app, ' us')} / {_fmt(bare_us, ' us')} ({why})",
                         "<= 1.5x", None))
            continue
        ratio = app / bare_us
        rows.append((name, f"{app:.0f} / {bare_us:.0f} us = {ratio:.2f}x", "<= 1.5x",
                     ratio <= 1.5))
    return rows


def connections_row(conn: Any) -> Row:
    new = _get(conn, "new_vendor_connections")
    answers, vendor = _get(conn, "answers") or 50, _get(conn, "vendor") or "the vendor"
    requests = _get(conn, "vendor_requests")
    note = f", {requests} requests" if requests is not None else ""
    return (f"new TCP connections to {vendor}, {answers} sequential answers{note}",
            _fmt(new), "<= 2", None if new is None else new <= 2)


def wire_rows(relay: Any, wire_step: Any) -> list[Row]:
    """The relay's streams (the emulator's filler, the client offering deflate as browsers
    do), then bench/wire.py's realistic answer; uncompressed figures are shown, not judged:
    they are what a client that offers no compression receives."""
    rows: list[Row] = []
    offer = _get(_level(relay, 1), "arms", "A1", "ws_compression") or "-"
    for arm in ("A1", "A2"):
        wire = _get(_level(relay, 1), "added_by_arm", arm, "wire_per_text_byte")
        if wire is None and arm == "A2":
            continue
        rows.append((f"wire bytes per text byte, {arm}, K=1, client offers {offer} "
                     f"({_stream_note(relay)})",
                     _fmt(wire, "", 2), "<= 3", None if wire is None else wire <= 3))
    for key, label in (("prose/deflate", "a realistic Markdown answer, client offers deflate"),
                       ("prose/none", "the same, client offers no compression"),
                       ("filler/none", "filler answer, client offers no compression")):
        value = _get(wire_step, "cells", key, "wire_per_text_byte")
        judged = key.endswith("/deflate")
        rows.append((f"wire bytes per text byte, {label} (wire step)", _fmt(value, "", 2),
                     "<= 3" if judged else "-",
                     (value <= 3) if judged and value is not None else None))
    return rows


PEER_METRICS = (("added_ttft_ms", "added TTFT p50", " ms", 2),
                ("added_token_ms", "added per-token delay p50", " ms", 2),
                ("cpu_us_per_token", "CPU per token", " us", 0))


def latest_peer() -> tuple[Path | None, Any]:
    found = sorted(RESULTS.glob("peer-*.json"), key=lambda path: path.stat().st_mtime)
    if not found:
        return None, None
    try:
        return found[-1], json.loads(found[-1].read_text())
    except (OSError, ValueError):
        return found[-1], None


def peer_rows(peer: Any, path: Path | None) -> list[Row]:
    """/v1 against Open WebUI in the same run (bench/peer.py): ours <= theirs per metric."""
    if peer is None:
        why = "run make bench-peer" if path is None else f"unreadable {path.name}"
        return [("/v1 vs Open WebUI (added TTFT, per-token, CPU/token)", f"- ({why})",
                 "<= Open WebUI", None)]
    rows: list[Row] = []
    for level in _get(peer, "levels") or []:
        k = level.get("k")
        for key, label, unit, digits in PEER_METRICS:
            ours = _get(level, "systems", "ours", key)
            theirs = _get(level, "systems", "openwebui", key)
            ok = None if ours is None or theirs is None else ours <= theirs
            # The bare daphne relay of the same run, when measured: ours can hardly go below it.
            floor = _get(level, "systems", "daphne-bare", key)
            beside = "" if floor is None else f" (daphne floor {_fmt(floor, '', digits)})"
            rows.append((f"/v1 vs Open WebUI, {label}, K={k} ({path.name if path else ''})",
                         f"{_fmt(ours, '', digits)} / {_fmt(theirs, unit, digits)}{beside}",
                         "<= Open WebUI", ok))
    return rows or [("/v1 vs Open WebUI", f"- (no levels in {path})", "<= Open WebUI", None)]


def issue16_rows(result: Callable[[str], Any], chosen: Sequence[str]) -> list[Row]:
    """Issue 16's targets, in its table's order (steps that did not run give "-")."""
    rows = [ttft_row(result("ttft"), "embedded"), ttft_row(result("ttft-redis"), "Redis"),
            *floor_rows(result("floor")), post_burst_row(result("load")),
            capacity_row(result("capacity"))]
    rows += cpu_rows(result("load"), result("bare"))
    rows.append(connections_row(result("connections")))
    rows += wire_rows(result("relay"), result("wire"))
    rows += peer_rows(*reversed(latest_peer()))
    return rows


# --- older targets (docs/performance.md) --------------------------------------------------------
def relay_rows(relay: Any) -> list[Row]:
    rows: list[Row] = []
    one = _level(relay, 1)
    hundred = _level(relay, 100) or _level(relay, 32) or _level(relay, 10)
    for arm in ("A1", "A2"):
        added = _get(one, "added_by_arm", arm)
        if added is None:
            continue
        p50 = _get(added, "added_ttft_ms", "p50")
        p99 = _get(added, "added_ttft_ms", "p99")
        at_ts = _get(added, "added_ttft_from_first_ts_ms", "p50")
        n = _get(one, "arms", arm, "ok")
        rows.append((f"{arm} added TTFT p50/p99, K=1, relay step (n={_fmt(n)})",
                     f"{_fmt(p50, ' ms')} / {_fmt(p99, ' ms')}", "-", None))
        rows.append((f"{arm} added TTFT p50, K=1 (relay only, from first token)",
                     _fmt(at_ts, " ms"), "-", None))
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


def capacity_detail_rows(relay: Any) -> list[Row]:
    cap = _get(relay, "capacity", "result", "A1", "capacity")
    if cap is None:
        return []
    at_cap = next((lv for lv in _get(relay, "capacity", "levels") or [] if lv.get("k") == cap),
                  None)
    cpu = _get(at_cap, "arms", "A1", "app_cpu_us_per_token")
    return [(f"app CPU per token at capacity K={cap}", _fmt(cpu, " us"), "-", None)]


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


Section = tuple[str, list[Row]]


def summarise(steps: dict[str, dict[str, Any]]) -> list[Section]:
    result: Callable[[str], Any] = lambda name: _get(steps, name, "result")  # noqa: E731
    issue = issue16_rows(result, list(steps))
    older = relay_rows(result("relay")) + capacity_detail_rows(result("capacity"))
    older += memory_rows(result("memory")) + pages_rows(result("pages"))
    failed: list[Row] = [(f"{name}: the script failed (exit {step.get('exit')})", "-", "-",
                          False) for name, step in steps.items() if not step.get("ok")]
    sections = [("issue 16 targets", issue), ("other targets (docs/performance.md)", older)]
    return sections + ([("failed steps", failed)] if failed else [])


def render(sections: list[Section]) -> str:
    rows = [row for _, section in sections for row in section]
    width = max([len(r[0]) for r in rows] + [6])
    value_width = max([len(r[1]) for r in rows] + [8])
    lines = [f"{'metric':<{width}}  {'measured':>{value_width}}  {'target':>14}  verdict"]
    for title, section in sections:
        lines.append(f"-- {title}")
        lines += [f"{name:<{width}}  {value:>{value_width}}  {target:>14}  {_verdict(ok)}"
                  for name, value, target, ok in section]
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
    sections = summarise(steps)
    table = render(sections)
    print(table)
    out = RESULTS / f"bench-{stamp}.json"
    out.write_text(json.dumps({
        "started": stamp, "quick": args.quick, "loadavg": os.getloadavg(),
        "summary": [{"section": title, "metric": n, "measured": v, "target": t, "pass": ok}
                    for title, rows in sections for n, v, t, ok in rows],
        "peer_json": str(latest_peer()[0] or "") or None,
        "steps": steps}, indent=1))
    print(f"\nJSON: {out}")
    return 0 if all(step.get("ok") for step in steps.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
