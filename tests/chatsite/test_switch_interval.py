"""The server process hands the interpreter to a waiting thread within a millisecond
(chatsite/daphne_tuning.py `hand_over_sooner`): a request thread holding SQLite's write lock
gets it back after each statement without waiting out CPython's 5 ms."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from chatsite.daphne_tuning import SWITCH_INTERVAL, hand_over_sooner


@pytest.fixture
def restored_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_it_sets_a_one_millisecond_switch_interval(restored_interval: None) -> None:
    sys.setswitchinterval(0.005)
    hand_over_sooner()
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL) == pytest.approx(0.001)


@pytest.mark.parametrize(("daphne", "expected"), [(True, 0.001), (False, 0.005)])
def test_only_a_daphne_process_changes_it(daphne: bool, expected: float) -> None:
    # Loading the ASGI module in a daphne process applies it; importing it elsewhere (a
    # management command, a test, a worker) leaves the interpreter alone.
    code = ("import sys\n"
            + ("import daphne.cli\n" if daphne else "")
            + "import chatsite.asgi\n"
            + "print(sys.getswitchinterval())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) == pytest.approx(expected)
