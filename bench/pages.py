"""Long-conversation page benchmark: queries, server time and HTML bytes at 10/100/1,000 messages.

Target (shared docs/performance.md): the same query count at every size (<= 10), and the
1,000-message page's p50 within 2x of the 10-message page's.

Runs in-process: Django is set up here in embedded mode (SQLite file in a fresh directory under
bench/results/var-pages, no Redis), one user owns three conversations of 10, 100 and 1,000
messages (alternating prompt/answer, 1-2 KB Markdown answers with a list and a code block, all
on the active branch), and django.test.Client fetches, interleaved round by round:

- page:   GET /c/<id>/                       the conversation page (what a reload costs)
- thread: GET /c/<id>/thread/                the thread fragment (last page of messages)
- older:  GET /c/<id>/thread/?before=<seq>   "Load earlier messages", with the seq the page's
          button carries; a conversation without older messages (10 < PAGE_SIZE) has no button,
          so it fetches before=<next seq> instead: the same code path, every message.

Per request: time.perf_counter() around the client call (in-process, so that is server time
plus the test client's own small cost), SQL queries (CaptureQueriesContext), response bytes,
the status and the number of messages in the HTML. `selector` rows time
conversations.chat.selectors.thread() alone, the only part that sees the whole conversation.

    .venv/bin/python bench/pages.py                  # 30 requests per row after 3 warm-ups
    .venv/bin/python bench/pages.py --quick          # 5 requests per row, 1 warm-up
    .venv/bin/python bench/pages.py --repeat 100 --sizes 10,100,1000,5000

Django is set up by run()/main(), never at import: `from bench.pages import run, table` is
cheap. Settings can be configured once per process, so run() refuses a process whose Django was
configured by someone else.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/pages.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
VAR_PARENT = RESULTS / "var-pages"
SIZES = (10, 100, 1000)
ENDPOINTS = ("page", "thread", "older", "selector")
MAX_QUERIES = 10
MAX_P50_RATIO = 2.0
MODEL_SLUG = "llama-3.2-3b"
USERNAME = "pages-bench"
ARTICLE = b'<article class="msg '
# Beyond bench/relay.py's STRIPPED_ENV: variables that would move files or redirect requests.
EXTRA_STRIPPED = ("MEDIA_ROOT", "STATIC_ROOT", "S3_BUCKET", "SECURE_SSL_REDIRECT", "TIME_ZONE",
                  "ALLOW_SIGNUP", "ALLOW_ANONYMOUS_SHARES")

_var_dir: Path | None = None  # set once this module has configured Django in this process


# --- Django ------------------------------------------------------------------------------------
def setup_django() -> Path:
    """Configure Django on a fresh VAR_DIR and SQLite file, migrate; idempotent per process."""
    global _var_dir
    if _var_dir is not None:
        return _var_dir
    from django.conf import settings

    if settings.configured:
        raise RuntimeError("Django is already configured in this process; bench/pages.py needs "
                           "its own embedded settings: run it in a fresh process.")
    from bench.relay import STRIPPED_ENV

    VAR_PARENT.mkdir(parents=True, exist_ok=True)
    var_dir = Path(tempfile.mkdtemp(prefix="run-", dir=VAR_PARENT))
    (var_dir / "static").mkdir()  # STATIC_ROOT: WhiteNoise warns when it is missing
    for name in (*STRIPPED_ENV, *EXTRA_STRIPPED):
        os.environ.pop(name, None)
    os.environ.update({
        "DJANGO_SETTINGS_MODULE": "chatsite.settings", "VAR_DIR": str(var_dir),
        "DATABASE_URL": f"sqlite:///{var_dir / 'pages.sqlite3'}", "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
    })
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    _var_dir = var_dir
    return var_dir


def remove_var_dir() -> None:
    """Close the database and delete this process's VAR_DIR (Django stays configured on it)."""
    global _var_dir
    if _var_dir is None:
        return
    from django.db import connections

    connections.close_all()
    shutil.rmtree(_var_dir, ignore_errors=True)


# --- data --------------------------------------------------------------------------------------
TOPICS = ("caching", "retries", "pagination", "logging", "migrations", "timeouts", "batching",
          "indexes", "queues", "sessions", "streaming", "parsing")
SENTENCES = (
    "The short version is that the cost should depend on what you show, not on what you keep.",
    "Measure it before and after the change, on the same machine, in the same run.",
    "Most of the time the slow part is a query inside a loop rather than the query itself.",
    "Keep the hot path boring: one read, one render, nothing per item that touches the disk.",
    "If the data grows without bound, every step that looks at all of it will eventually hurt.",
    "A small index on the columns you filter by is usually cheaper than a clever cache.",
    "Errors should say what to do next, and logs should say what happened, never a secret.",
    "When in doubt, write the simple version first and keep the numbers that justify more.",
)


def prompt_text(rng: random.Random, index: int) -> str:
    topic = rng.choice(TOPICS)
    extra = " ".join(rng.sample(SENTENCES, rng.randint(0, 2)))
    return (f"Question {index}: how should I handle {topic} in a Django view that lists "
            f"`items` for a user? {extra}").strip()


def answer_text(rng: random.Random, index: int) -> str:
    """A 1-2 KB Markdown answer: heading, paragraphs, a list, a Python block, inline markup."""
    topic = rng.choice(TOPICS)
    intro = " ".join(rng.sample(SENTENCES, rng.randint(3, 5)))
    points = "\n".join(f"- **Step {n}:** {rng.choice(SENTENCES)}"
                       for n in range(1, rng.randint(4, 6)))
    body = "\n".join(f"        total += item.weight * {n}  # share {n}"
                     for n in range(rng.randint(2, 8)))
    code = (f"```python\ndef summarise_{topic}_{index}(items: list[Item]) -> int:\n"
            f"    \"\"\"Sum the weights, once per item ({topic}).\"\"\"\n    total = 0\n"
            f"    for item in items:\n{body}\n    return total\n```")
    outro = " ".join(rng.sample(SENTENCES, rng.randint(1, 3)))
    return (f"### {topic.capitalize()}, answer {index}\n\n{intro}\n\n{points}\n\n{code}\n\n"
            f"Call `summarise_{topic}_{index}()` once per request; see the "
            f"[docs](https://example.com/docs/{topic}) for details. {outro}\n")


def build_conversation(user: Any, model: Any, size: int, seed: int) -> Any:
    """`size` messages in one chain (prompt, answer, ...), the last one the active leaf."""
    from django.db import transaction

    from conversations.models import Conversation, Message, MessageStatus

    rng = random.Random(seed)
    with transaction.atomic():
        conversation = Conversation.objects.create(
            owner=user, model=model, title=f"Long conversation, {size} messages",
            title_is_auto=False)
        chain: list[Message] = []
        parent = None
        for seq in range(1, size + 1):
            if seq % 2:
                message = Message(conversation=conversation, parent=parent, seq=seq,
                                  role=Message.Role.USER, author=user, client_id=uuid.uuid4(),
                                  content=prompt_text(rng, seq), status=MessageStatus.COMPLETE)
            else:
                content = answer_text(rng, seq)
                message = Message(conversation=conversation, parent=parent, seq=seq,
                                  role=Message.Role.ASSISTANT, model=model, content=content,
                                  status=MessageStatus.COMPLETE, finish_reason="stop",
                                  prompt_tokens=40 * seq, completion_tokens=len(content) // 4,
                                  ttft_ms=300, duration_ms=4000, request_id=f"req-{seq}")
            chain.append(message)
            parent = message
        # Unsaved parents are fine: UUID keys exist before the insert, and batches go in order.
        Message.objects.bulk_create(chain, batch_size=500)
        conversation.active_leaf = chain[-1] if chain else None
        conversation.next_seq = size + 1
        conversation.save(update_fields=["active_leaf", "next_seq", "updated_at"])
    return conversation


def check_conversation(conversation: Any, size: int) -> None:
    """The selector must see the whole chain, or the benchmark measures a short page."""
    from conversations.chat import selectors

    path = selectors.thread(conversation, limit=size + 1).nodes
    shown = selectors.thread(conversation).nodes
    if len(path) != size or len(shown) != min(size, selectors.PAGE_SIZE):
        raise RuntimeError(f"conversation of {size}: active path {len(path)}, shown {len(shown)}")


def seed(sizes: Sequence[int]) -> tuple[Any, dict[int, Any], dict[int, dict[str, Any]]]:
    from django.contrib.auth import get_user_model

    from bench.relay import EMULATOR_ENV
    from conversations.models import Message
    from providers.models import ModelConfig
    from providers.services import sync_from_env

    sync_from_env(dict(EMULATOR_ENV))  # what `manage.py sync_providers` does with these vars
    model = ModelConfig.objects.get(slug=MODEL_SLUG)
    user, _created = get_user_model().objects.get_or_create(username=USERNAME)
    conversations: dict[int, Any] = {}
    info: dict[int, dict[str, Any]] = {}
    for size in sizes:
        started = time.perf_counter()
        conversation = build_conversation(user, model, size, seed=size)
        check_conversation(conversation, size)
        contents = Message.objects.filter(conversation=conversation).values_list(
            "role", "content")
        answer_bytes = [len(text.encode()) for role, text in contents if role == "assistant"]
        conversations[size] = conversation
        info[size] = {
            "conversation": str(conversation.pk), "messages": size,
            "seed_s": round(time.perf_counter() - started, 3),
            "content_bytes": sum(len(text.encode()) for _role, text in contents),
            "answer_bytes_min_max": [min(answer_bytes, default=0), max(answer_bytes, default=0)],
        }
    return user, conversations, info


# --- measurement -------------------------------------------------------------------------------
@dataclass
class Sample:
    seconds: float
    queries: int
    size_bytes: int
    status: int
    messages: int


def older_before(conversation: Any) -> int:
    """What the page's "Load earlier messages" button sends; past the end when it has none."""
    from conversations.chat import selectors

    first = selectors.thread(conversation)
    return first.oldest_seq if first.has_older and first.oldest_seq else conversation.next_seq


def request_sampler(client: Any, url: str) -> Callable[[], tuple[Sample, list[str]]]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def sample() -> tuple[Sample, list[str]]:
        with CaptureQueriesContext(connection) as ctx:
            started = time.perf_counter()
            response = client.get(url)
            seconds = time.perf_counter() - started
        body = response.content
        return (Sample(seconds, len(ctx.captured_queries), len(body), response.status_code,
                       body.count(ARTICLE)), [q["sql"] for q in ctx.captured_queries])

    return sample


def selector_sampler(conversation: Any) -> Callable[[], tuple[Sample, list[str]]]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from conversations.chat import selectors

    def sample() -> tuple[Sample, list[str]]:
        with CaptureQueriesContext(connection) as ctx:
            started = time.perf_counter()
            shown = selectors.thread(conversation)
            seconds = time.perf_counter() - started
        return (Sample(seconds, len(ctx.captured_queries), 0, 200, len(shown.nodes)),
                [q["sql"] for q in ctx.captured_queries])

    return sample


def samplers(user: Any, conversations: dict[int, Any]
             ) -> dict[tuple[str, int], Callable[[], tuple[Sample, list[str]]]]:
    from django.test import Client

    client = Client(HTTP_HOST="127.0.0.1")  # ALLOWED_HOSTS of embedded mode, not "testserver"
    client.force_login(user)
    table: dict[tuple[str, int], Callable[[], tuple[Sample, list[str]]]] = {}
    for size, conversation in conversations.items():
        base = f"/c/{conversation.pk}/"
        table["page", size] = request_sampler(client, base)
        table["thread", size] = request_sampler(client, f"{base}thread/")
        table["older", size] = request_sampler(
            client, f"{base}thread/?before={older_before(conversation)}")
        table["selector", size] = selector_sampler(conversation)
    return table


def collect(table: dict[tuple[str, int], Callable[[], tuple[Sample, list[str]]]], repeat: int,
            warmup: int) -> tuple[dict[tuple[str, int], list[Sample]], dict[tuple[str, int],
                                                                            list[str]]]:
    """Warm-ups, then `repeat` rounds; every round visits every row once (interleaved)."""
    samples: dict[tuple[str, int], list[Sample]] = {key: [] for key in table}
    sql: dict[tuple[str, int], list[str]] = {}
    for sampler in table.values():
        for _ in range(warmup):
            sampler()
    for _round in range(repeat):
        for key, sampler in table.items():
            sample, queries = sampler()
            samples[key].append(sample)
            sql.setdefault(key, queries)
    return samples, sql


# --- summary -----------------------------------------------------------------------------------
def quantile(values: Sequence[float], q: float) -> float | None:
    from bench.relay import quantile as relay_quantile

    return relay_quantile(values, q)


def summarise(samples: list[Sample]) -> dict[str, Any]:
    times = [s.seconds * 1000 for s in samples]
    p50, p99 = quantile(times, 0.5), quantile(times, 0.99)
    return {
        "n": len(samples),
        "p50_ms": None if p50 is None else round(p50, 3),
        "p99_ms": None if p99 is None else round(p99, 3),
        "min_ms": round(min(times), 3), "mean_ms": round(sum(times) / len(times), 3),
        "queries": sorted({s.queries for s in samples}),
        "bytes": sorted({s.size_bytes for s in samples}),
        "status": sorted({s.status for s in samples}),
        "messages_shown": sorted({s.messages for s in samples}),
    }


def judge(rows: dict[str, dict[int, dict[str, Any]]], sizes: Sequence[int]) -> dict[str, Any]:
    """Per endpoint: constant queries, <= MAX_QUERIES, p50(largest) / p50(smallest) <= 2."""
    small, large = min(sizes), max(sizes)
    verdicts: dict[str, Any] = {}
    for endpoint, by_size in rows.items():
        counts = sorted({q for row in by_size.values() for q in row["queries"]})
        ratio = by_size[large]["p50_ms"] / by_size[small]["p50_ms"]
        # The same number of messages on screen: what growth of the conversation alone costs.
        full = by_size[large]["messages_shown"]
        peers = [s for s in sizes if s != large and by_size[s]["messages_shown"] == full]
        same_page = by_size[large]["p50_ms"] / by_size[min(peers)]["p50_ms"] if peers else None
        ok_status = all(row["status"] == [200] for row in by_size.values())
        verdicts[endpoint] = {
            "queries": counts, "queries_constant": len(counts) == 1,
            "queries_within_max": max(counts) <= MAX_QUERIES,
            "p50_ratio": round(ratio, 3), "p50_ratio_sizes": f"{large}/{small}",
            "p50_ratio_within_max": ratio <= MAX_P50_RATIO,
            "same_page_ratio": None if same_page is None else round(same_page, 3),
            "same_page_sizes": f"{large}/{min(peers)}" if peers else None,
            "all_200": ok_status,
        }
        verdicts[endpoint]["pass"] = all(verdicts[endpoint][k] for k in (
            "queries_constant", "queries_within_max", "p50_ratio_within_max", "all_200"))
    return verdicts


def environment() -> dict[str, Any]:
    import sqlite3

    import django

    return {"python": platform.python_version(), "django": django.get_version(),
            "sqlite": sqlite3.sqlite_version, "platform": platform.platform(),
            "cpus": os.cpu_count(), "pid": os.getpid()}


def run(repeat: int = 30, sizes: tuple[int, ...] = SIZES, *, warmup: int = 3) -> dict[str, Any]:
    """Set up Django (once per process), seed, measure; the report as a JSON-able dict."""
    if repeat < 1 or not sizes or min(sizes) < 1:
        raise ValueError("repeat and every size must be >= 1")
    sizes = tuple(sorted(set(sizes)))
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    var_dir = setup_django()
    from conversations.chat import selectors

    user, conversations, info = seed(sizes)
    samples, sql = collect(samplers(user, conversations), repeat, warmup)
    rows = {endpoint: {size: summarise(samples[endpoint, size]) for size in sizes}
            for endpoint in ENDPOINTS}
    return {
        "config": {"repeat": repeat, "warmup": warmup, "sizes": list(sizes),
                   "page_size": selectors.PAGE_SIZE, "model": MODEL_SLUG,
                   "var_dir": str(var_dir), "database": "sqlite (embedded mode)",
                   "max_queries": MAX_QUERIES, "max_p50_ratio": MAX_P50_RATIO},
        "environment": {**environment(), "loadavg_1m_start_end": [
            round(load_start, 2), round(os.getloadavg()[0], 2)]},
        "conversations": {str(size): info[size] for size in sizes},
        "rows": {endpoint: {str(size): row for size, row in by_size.items()}
                 for endpoint, by_size in rows.items()},
        "targets": judge(rows, sizes),
        "sql": {f"{endpoint} {size}": sql[endpoint, size] for endpoint, size in sql},
        "samples_ms": {f"{endpoint} {size}": [round(s.seconds * 1000, 3) for s in batch]
                       for (endpoint, size), batch in samples.items()},
        "elapsed_s": round(time.perf_counter() - started, 2),
    }


# --- output ------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _one(values: list[int]) -> str:
    return "/".join(str(v) for v in values)


def table(result: dict[str, Any]) -> str:
    sizes = [str(s) for s in result["config"]["sizes"]]
    small = sizes[0]
    lines = [f"{'endpoint':<9} {'size':>5} {'shown':>5} {'queries':>7} {'p50 ms':>8} "
             f"{'p99 ms':>8} {'HTML KB':>8} {'x p50':>6} status"]
    for endpoint, by_size in result["rows"].items():
        base = by_size[small]["p50_ms"]
        for size in sizes:
            row = by_size[size]
            kb = "-" if endpoint == "selector" else f"{max(row['bytes']) / 1024:.1f}"
            lines.append(
                f"{endpoint:<9} {size:>5} {_one(row['messages_shown']):>5} "
                f"{_one(row['queries']):>7} {_fmt(row['p50_ms']):>8} {_fmt(row['p99_ms']):>8} "
                f"{kb:>8} {_fmt(row['p50_ms'] / base):>6} {_one(row['status'])}")
    lines.append("")
    for endpoint, verdict in result["targets"].items():
        if endpoint == "selector":
            continue
        same = (f"; {verdict['same_page_sizes']} (same messages shown) = "
                f"{verdict['same_page_ratio']:.2f}x" if verdict["same_page_ratio"] else "")
        lines.append(
            f"{endpoint:<7} queries {_one(verdict['queries'])} "
            f"{'constant' if verdict['queries_constant'] else 'NOT constant'}, "
            f"<= {MAX_QUERIES}: {_ok(verdict['queries_within_max'])}; "
            f"p50 {verdict['p50_ratio_sizes']} = {verdict['p50_ratio']:.2f}x "
            f"(<= {MAX_P50_RATIO:g}x): {_ok(verdict['p50_ratio_within_max'])}{same} "
            f"=> {_ok(verdict['pass'])}")
    env = result["environment"]
    lines.append(f"repeat {result['config']['repeat']} after {result['config']['warmup']} "
                 f"warm-ups, page size {result['config']['page_size']}; loadavg 1m "
                 f"{env['loadavg_1m_start_end']}; {result['elapsed_s']} s")
    return "\n".join(lines)


def _ok(value: bool) -> str:
    return "PASS" if value else "FAIL"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=None, help="requests per row (30)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-ups per row (3)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="messages per conversation, comma-separated")
    parser.add_argument("--quick", action="store_true", help="5 requests per row, 1 warm-up")
    parser.add_argument("--json", type=Path, default=None, help="output file")
    parser.add_argument("--keep", action="store_true", help="keep the VAR_DIR and database")
    args = parser.parse_args(argv)
    repeat = args.repeat or (5 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip())
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    json_path = (args.json or RESULTS / f"pages-{stamp}.json").resolve()
    try:
        result = run(repeat, sizes, warmup=warmup)
    finally:
        if not args.keep:
            remove_var_dir()
    print(table(result))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(f"\nJSON: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
