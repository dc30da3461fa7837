"""The relay benchmark runs end to end on a tiny load: every arm, no errors, bytes counted.

It starts its own emulator and daphne (and, for A2, Celery worker) processes, so these are
subprocess tests. They assert counts and bytes only, never times (docs/performance.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
# A tiny load: one stream per round, a short answer at a fast pace.
TINY = ["--quick", "--tokens", "30", "--rate", "200", "--repeat", "2"]


def run_relay(tmp_path: Path, *args: str, timeout: float = 120) -> tuple[dict[str, Any], str]:
    out = tmp_path / "relay.json"
    done = subprocess.run(
        [sys.executable, "bench/relay.py", *TINY, *args, "--json", str(out),
         "--var-dir", str(tmp_path / "var")],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return json.loads(out.read_text()), done.stdout


def assert_clean_arm(report: dict[str, Any], level: dict[str, Any], arm: str,
                     answer: str = "answer") -> None:
    summary = level["arms"][arm]
    assert summary["streams"] == 2
    assert summary["ok"] == 2
    assert summary["errors"] == 0, summary["error_kinds"]
    assert summary["tokens_delivered"] == 60
    assert summary["text_bytes"] == 2 * report[answer]["text_bytes"]
    assert summary["token_delay_ms"]["n"] == 60
    if arm != "A0":
        # Every byte of text crosses as a delta; the client offers deflate as browsers do, so
        # the bytes on the wire are fewer than the frames' text.
        assert summary["payload_bytes"] > summary["text_bytes"] > 0
        assert summary["ws_compression"] == "deflate"
        assert 0 < summary["wire_bytes"] < summary["payload_bytes"]
        assert summary["wire_per_text_byte"] == round(
            summary["wire_bytes"] / summary["text_bytes"], 4)
        added = level["added_by_arm"][arm]
        assert added["wire_per_text_byte"] == summary["wire_per_text_byte"]
        assert added["errors"] == {"A0": 0, arm: 0}


def test_relay_benchmark_quick_run_reports_both_arms_without_errors(tmp_path: Path) -> None:
    report, stdout = run_relay(tmp_path, "--k", "1", "--arms", "A0,A1")
    assert report["answer"]["tokens"] == 30
    assert report["environment"]["stack"] == "embedded"
    [level] = report["levels"]
    assert level["k"] == 1
    assert set(level["arms"]) == {"A0", "A1"}
    for arm in ("A0", "A1"):
        assert_clean_arm(report, level, arm)
    assert level["added"] == level["added_by_arm"]["A1"]
    assert level["arms"]["A1"]["worker_cpu_s"] == 0
    assert len(report["streams"]) == 4
    assert report["capacity"] is None
    assert "A1" in stdout and "Added by the app" in stdout


def test_relay_capacity_search_reports_every_level_it_ran(tmp_path: Path) -> None:
    report, stdout = run_relay(tmp_path, "--capacity", "--k-max", "2", "--repeat", "1")
    capacity = report["capacity"]
    ran = [row["k"] for row in capacity["levels"]]
    assert ran == [level["k"] for level in report["levels"]]
    assert ran in ([1], [1, 2])  # stops at the first failing level, else at --k-max
    outcome = capacity["result"]["A1"]
    assert outcome["reached_k_max"] == (outcome["first_failing_k"] is None)
    passed = [row["k"] for row in capacity["levels"] if row["arms"]["A1"]["pass"]]
    assert outcome["capacity"] == (passed[-1] if passed else 0)
    for row in capacity["levels"]:
        assert row["rounds"] == 1
        assert row["arms"]["A1"]["streams"] == row["k"]
    assert "Capacity A1:" in stdout


def _redis_stack_urls() -> tuple[str, str]:
    """The benchmark's own Redis database (14) and PostgreSQL database on the servers the
    Redis run of the test suite uses."""
    redis_url, database_url = os.environ.get("REDIS_URL", ""), os.environ.get("DATABASE_URL", "")
    if not redis_url:
        pytest.skip("REDIS_URL is not set: the vision arm needs Redis and a Celery worker")
    if urlsplit(database_url).scheme not in ("postgres", "postgresql"):
        pytest.skip("DATABASE_URL is not PostgreSQL: the vision arm needs it")
    redis = urlsplit(redis_url)
    pg = urlsplit(database_url)
    return (urlunsplit(redis._replace(path="/14", query="")),
            urlunsplit(pg._replace(path="/llamachat_bench", query="")))


def test_relay_benchmark_vision_arm_runs_through_the_worker(tmp_path: Path) -> None:
    redis_url, database_url = _redis_stack_urls()
    report, stdout = run_relay(tmp_path, "--k", "1", "--arms", "A0,A1,A2", "--redis-url", redis_url,
                               "--database-url", database_url)
    assert report["environment"]["stack"] == "redis"
    assert report["answer_vision"]["tokens"] == 30
    [level] = report["levels"]
    assert set(level["arms"]) == {"A0", "A1", "A2"}
    for arm in ("A0", "A1"):
        assert_clean_arm(report, level, arm)
    assert_clean_arm(report, level, "A2", answer="answer_vision")
    # The vision answers ran in the worker: its CPU is part of the app's.
    a2 = level["arms"]["A2"]
    assert a2["worker_cpu_s"] > 0
    assert a2["app_cpu_s"] == pytest.approx(a2["daphne_cpu_s"] + a2["worker_cpu_s"], abs=0.002)
    assert len(report["streams"]) == 6
    assert "A2" in stdout
