"""The floor benchmark runs end to end on a tiny load, and its view is never the product's.

A subprocess test (it starts an emulator and two daphnes): counts only, never times.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.urls import Resolver404, resolve

ROOT = Path(__file__).resolve().parents[2]


def test_floor_benchmark_runs_every_arm_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    done = subprocess.run(
        [sys.executable, "bench/floor.py", "--rounds", "2", "--tokens", "5", "--json", str(out),
         "--var-dir", str(tmp_path / "var")],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    report = json.loads(out.read_text())
    assert list(report["arms"]) == ["A0", "D", "DJ", "MW", "A1"]
    for arm, row in report["arms"].items():
        assert (row["n"], row["errors"]) == (2, 0), arm
    assert "The middleware floor adds" in done.stdout


def test_the_product_does_not_serve_the_floor_view() -> None:
    # The floor view relays to the vendor with no rule at all: only bench/floor.py's settings
    # have it.
    with pytest.raises(Resolver404):
        resolve("/bench-floor/")
