"""The relay benchmark runs end to end on a tiny load: both arms, no errors, bytes counted.

It starts its own emulator and daphne processes, so it is a subprocess test. It asserts
counts and bytes only, never times (docs/performance.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_relay_benchmark_quick_run_reports_both_arms_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "relay.json"
    done = subprocess.run(
        [sys.executable, "bench/relay.py", "--quick", "--k", "1", "--tokens", "30", "--rate",
         "200", "--repeat", "2", "--json", str(out), "--var-dir", str(tmp_path / "var")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    report = json.loads(out.read_text())
    assert report["answer"]["tokens"] == 30
    [level] = report["levels"]
    assert level["k"] == 1
    for arm in ("A0", "A1"):
        summary = level["arms"][arm]
        assert summary["streams"] == 2
        assert summary["ok"] == 2
        assert summary["errors"] == 0, summary["error_kinds"]
        assert summary["tokens_delivered"] == 60
        assert summary["text_bytes"] == 2 * report["answer"]["text_bytes"]
        assert summary["token_delay_ms"]["n"] == 60
    a1 = level["arms"]["A1"]
    assert a1["wire_bytes"] > a1["text_bytes"] > 0
    assert a1["wire_per_text_byte"] == round(a1["wire_bytes"] / a1["text_bytes"], 4)
    assert level["added"]["wire_per_text_byte"] == a1["wire_per_text_byte"]
    assert level["added"]["errors"] == {"A0": 0, "A1": 0}
    assert len(report["streams"]) == 4
    assert "A1" in done.stdout and "Added by the app" in done.stdout
