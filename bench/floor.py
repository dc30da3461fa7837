"""The floor under issue 16's first target: what daphne, Django and our middleware add to the
first token before any product code runs.

The target is "added TTFT from the POST <= 5 ms p50 at K=1" (against A0, this client reading
the vendor directly). This script measures, interleaved in one run on the embedded stack of
bench/relay.py (same emulator, same pinning, same prompt and pace), four ways from a request
to the vendor's first token:

- A0: this client reads the emulator's stream directly (relay.py's A0).
- D:  daphne with a bare ASGI app (no Django): the request body is the prompt, the vendor's
      stream is the response body. What the server and one relay hop cost.
- DJ: the same daphne, Django's ASGI handler, no middleware, no database, an async view.
- MW: the product's daphne and settings (chatsite.asgi, every middleware, the session and
      CSRF checks, the signed-in user), a sync view that makes the vendor call and streams it
      back. No database write, no product rule.
- A1: the product: POST /c/<id>/messages/, the answer on the conversation's open websocket
      (relay.py's A1).

D, DJ and MW are floors: no design that keeps daphne, Django's request handling and the
product's middleware can add less to the first token than they do. They relay over the HTTP
response, A1 over a websocket; both are one hop from the vendor to the client.

    .venv/bin/python bench/floor.py                 # 200 rounds of the five arms, ~3 min
    .venv/bin/python bench/floor.py --rounds 50

Output: a table on stdout and `bench/results/floor-<UTC time>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.relay import (  # the path above makes `bench` importable as a script
    RESULTS,
    SLOT_ROUNDS,
    AppClient,
    Bench,
    Config,
    Slot,
    Stack,
    StreamResult,
    _a0_event,
    _sleep_until,
    _wait_healthy,
    free_port,
    open_slot,
    parse_args,
    quantile,
    run_a0,
    run_app,
    sse_events,
)

ARMS = ("A0", "D", "DJ", "MW", "A1")
TARGET_MS = 5.0


class FloorStack(Stack):
    """relay.py's embedded stack, its daphne on the floor settings (the product plus one
    URL), and a second daphne serving the D and DJ floors, both pinned to the app's core."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.bare_port = free_port()
        self.bare_url = f"http://127.0.0.1:{self.bare_port}"
        self.logs["bare"] = cfg.var_dir / "bare.log"

    def env(self) -> dict[str, str]:
        return {**super().env(), "DJANGO_SETTINGS_MODULE": "bench.floor_site.settings"}

    def start(self) -> None:
        super().start()  # taskset pins the child whatever this process's own affinity
        bare = self._spawn("bare", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p",
                                    str(self.bare_port), "bench.floor_site.bare:application"],
                           core=0)
        _wait_healthy(f"{self.bare_url}/healthz", bare, self.logs["bare"], 30)


async def run_floor(http: httpx.AsyncClient, url: str, res: StreamResult, start_at: float,
                    **request: Any) -> None:
    """One floor stream: a POST whose response body is the vendor's SSE stream."""
    await _sleep_until(start_at)
    texts: list[str] = []
    done = False
    res.t_send = time.monotonic()
    try:
        async with asyncio.timeout(60), http.stream("POST", url, **request) as response:
            if response.status_code != 200:
                res.error = f"http_{response.status_code}"
                return
            buffer = bytearray()
            async for chunk in response.aiter_raw():
                now = time.monotonic()
                buffer += chunk
                for event in sse_events(buffer):
                    done = _a0_event(event, now, res, texts) or done
    except (TimeoutError, httpx.HTTPError) as exc:
        res.error = f"transport_{type(exc).__name__}"
    if not res.error and not done:
        res.error = "no_done"


def _ms(values: list[float], q: float) -> float | None:
    value = quantile(values, q)
    return None if value is None else round(value * 1000, 2)


async def measure(cfg: Config, stack: FloorStack, rounds: int) -> dict[str, Any]:
    bench = Bench(cfg, stack)
    answer = await bench.learn_answer()
    app = AppClient(stack.app_url, httpx.AsyncHTTPTransport(), stack.sessions[0])
    bare = httpx.AsyncClient(timeout=60.0)
    ttft: dict[str, list[float]] = {arm: [] for arm in ARMS}
    post: list[float] = []
    errors: dict[str, int] = {arm: 0 for arm in ARMS}
    slot: Slot | None = None
    try:
        for rnd in range(rounds):
            if slot is None or slot.answers >= SLOT_ROUNDS:
                if slot is not None:
                    await slot.close()
                slot = await open_slot(app, cfg, cfg.model, bench.conversation_tag("A1", 1))
            for arm in ARMS:
                res = StreamResult(arm, 1, rnd, 0, bench.tag(arm, 1, rnd, 0))
                prompt = cfg.prompt(res.tag)
                start = time.monotonic() + 0.02
                if arm == "A0":
                    await run_a0(bench.emu, stack.emu_url, cfg, res, answer, start)
                elif arm in ("D", "DJ"):
                    path = "/raw/" if arm == "D" else "/django/"
                    await run_floor(bare, f"{stack.bare_url}{path}", res, start,
                                    content=prompt.encode())
                elif arm == "MW":
                    await run_floor(app.http, "/bench-floor/", res, start,
                                    headers=app._headers(), data={"text": prompt})
                else:
                    await run_app(slot, cfg, res, answer, start)
                    if res.t_response is not None:
                        post.append(res.t_response - res.t_send)
                if res.error or not res.arrivals:
                    errors[arm] += 1
                else:
                    ttft[arm].append(res.arrivals[0] - res.t_send)
            await bench.emu.post("/_emulator/reset", json={})
    finally:
        if slot is not None:
            await slot.close()
        await app.http.aclose()
        await bare.aclose()
        await bench.aclose()
    return {"ttft": ttft, "post": post, "errors": errors}


def report(cfg: Config, raw: dict[str, Any], rounds: int) -> dict[str, Any]:
    ttft = raw["ttft"]
    a0 = {q: _ms(ttft["A0"], q) for q in (0.5, 0.99)}
    arms: dict[str, Any] = {}
    for arm in ARMS:
        p50, p99 = _ms(ttft[arm], 0.5), _ms(ttft[arm], 0.99)
        arms[arm] = {
            "n": len(ttft[arm]), "errors": raw["errors"][arm],
            "ttft_p50_ms": p50, "ttft_p99_ms": p99,
            "added_p50_ms": None if p50 is None or a0[0.5] is None
            else round(p50 - a0[0.5], 2),
            "added_p99_ms": None if p99 is None or a0[0.99] is None
            else round(p99 - a0[0.99], 2),
            "mean_ms": round(statistics.fmean(ttft[arm]) * 1000, 2) if ttft[arm] else None,
        }
    return {
        "benchmark": "floor", "rounds": rounds, "tokens": cfg.tokens, "rate": cfg.rate,
        "emulator_ttft_s": cfg.ttft, "target_added_p50_ms": TARGET_MS, "arms": arms,
        "a1_post_p50_ms": _ms(raw["post"], 0.5), "a1_post_p99_ms": _ms(raw["post"], 0.99),
    }


LABELS = {
    "A0": "client reads the vendor directly",
    "D": "daphne, bare ASGI relay",
    "DJ": "daphne + Django handler, async view",
    "MW": "the product's daphne + middleware, signed in",
    "A1": "the product: POST, answer on the websocket",
}


def render(result: dict[str, Any]) -> str:
    lines = [f"Floor benchmark: {result['rounds']} rounds, K=1, {result['tokens']} tokens, "
             f"emulator TTFT {result['emulator_ttft_s']:g} s (ms)",
             f"{'arm':<4} {'what':<46} {'TTFT p50':>9} {'p99':>8} {'added p50':>10} "
             f"{'p99':>8} {'errors':>7}"]
    for arm, row in result["arms"].items():
        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"
        added50 = "" if arm == "A0" else fmt(row["added_p50_ms"])
        added99 = "" if arm == "A0" else fmt(row["added_p99_ms"])
        lines.append(f"{arm:<4} {LABELS[arm]:<46} {fmt(row['ttft_p50_ms']):>9} "
                     f"{fmt(row['ttft_p99_ms']):>8} {added50:>10} {added99:>8} "
                     f"{row['errors']:>7}")
    mw = result["arms"]["MW"]["added_p50_ms"]
    if mw is not None:
        verdict = "below" if mw <= TARGET_MS else "above"
        lines.append(f"The middleware floor adds {mw:.2f} ms p50: {verdict} the {TARGET_MS:g} ms "
                     "target before any product code runs.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--var-dir", type=Path, default=RESULTS / "var-floor")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = (args.json or RESULTS / f"floor-{stamp}.json").resolve()
    cfg = parse_args(["--arms", "A0,A1", "--stack", "embedded", "--k", "1", "--tokens",
                      str(args.tokens), "--spread", "0", "--var-dir",
                      str(args.var_dir), "--json", str(out)]
                     + (["--no-pin"] if args.no_pin else []))
    stack = FloorStack(cfg)
    try:
        stack.start()
        raw = asyncio.run(measure(cfg, stack, args.rounds))
    except Exception as exc:
        print(f"floor benchmark failed: {type(exc).__name__}: {exc}\n{stack.log_tail()}",
              file=sys.stderr)
        return 1
    finally:
        stack.stop()
    result = report(cfg, raw, args.rounds)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(render(result))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
