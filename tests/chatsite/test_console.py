"""What a newcomer reads in the terminal: `make run` and `make demo` on a fresh database say
once, clearly, when the server listens; hint at `make demo` when no provider has keys; print
the emulators' credentials and markers in demo mode; and nothing doubled or alarming."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.emulators.state import Credentials
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
READY = "Llama Chat is ready: "
# Lines a newcomer should never see: login-throttling banners, pip and setuptools chatter,
# echoed shell commands, tracebacks.
NOISE = ["AXES:", "DEPRECATION", "setuptools", "SetuptoolsDeprecationWarning", "Traceback",
         "pip install", "manage.py", "daphne -b", "Obtaining file:", "WARNING"]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


class Console:
    """`make <target>` in its own process group, its output read line by line as it comes."""

    def __init__(self, target: str, tmp_path: Path, **variables: str) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CLOUDFLARE_", "DASHSCOPE_", "QIANFAN_", "DJANGO_ALLOW"))
               and k not in {"DATABASE_URL", "REDIS_URL", "SITE_URL", "LOG_LEVEL", "PORT",
                             "HOST", "EMULATOR_PORT", "MAKEFLAGS", "MFLAGS"}}
        env.update({"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
                    "VAR_DIR": str(tmp_path / "var"), "PYTHONUNBUFFERED": "1"})
        self.lines: list[tuple[float, str]] = []
        self.port = int(variables["PORT"])
        self.proc = subprocess.Popen(
            ["make", "--no-print-directory", target, *(f"{k}={v}" for k, v in variables.items())],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, text=True)
        self.listening_when_ready: bool | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line.startswith(READY) and self.listening_when_ready is None:
                # The moment the line appears, the port must already accept connections.
                with socket.socket() as sock:
                    self.listening_when_ready = sock.connect_ex(("127.0.0.1", self.port)) == 0
            self.lines.append((time.monotonic(), line))

    def wait_for(self, text: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for _t, line in self.lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never came; output:\n{self.text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(5)
        return self.proc.returncode

    def text(self) -> str:
        return "\n".join(line for _t, line in self.lines)


@pytest.fixture
def console(tmp_path: Path) -> Iterator[list[Console]]:
    started: list[Console] = []
    yield started
    for each in started:
        each.stop()


def _no_noise(output: str) -> None:
    for noise in NOISE:
        assert noise not in output, f"{noise!r} in the console:\n{output}"
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), f"a line is printed twice:\n{output}"


def test_make_run_says_once_when_it_listens_and_hints_at_the_demo(
        tmp_path: Path, console: list[Console]) -> None:
    port = free_port()
    run = Console("run", tmp_path, PORT=str(port), HOST="127.0.0.1")
    console.append(run)
    run.wait_for(READY)
    assert run.listening_when_ready is True
    time.sleep(1.0)  # anything printed right after start-up counts too
    run.stop()
    output = run.text()
    assert output.count(READY) == 1
    assert f"{READY}http://127.0.0.1:{port}/  (Ctrl-C stops it)" in output
    # No provider has keys on a fresh database: say what to do.
    assert "No provider has keys yet" in output and "make demo" in output
    _no_noise(output)
    # The ready line comes after the hint, and nothing alarming follows it.
    assert output.index("No provider has keys yet") < output.index(READY)


def test_make_demo_prints_the_emulators_credentials_and_markers(
        tmp_path: Path, console: list[Console]) -> None:
    port, emulator_port = free_port(), free_port()
    demo = Console("demo", tmp_path, PORT=str(port), HOST="127.0.0.1",
                   EMULATOR_PORT=str(emulator_port))
    console.append(demo)
    demo.wait_for("[[emu:500-before]]")
    assert demo.listening_when_ready is True
    output = demo.text()
    creds = Credentials()
    for value in (creds.cloudflare_account_id, creds.cloudflare_api_token,
                  creds.dashscope_api_key, creds.qianfan_ak, creds.qianfan_sk):
        assert value in output
    assert f"http://127.0.0.1:{emulator_port}" in output
    for marker in ("[[emu:tokens n=300 rate=20]]", "[[emu:error-after n=3]]",
                   "[[emu:429-before]]"):
        assert marker in output
    assert "No provider has keys yet" not in output  # the emulators are configured
    assert output.count(READY) == 1
    # The emulators answer at the printed address with the printed credentials.
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", emulator_port)) == 0
    demo.stop()
    _no_noise(demo.text())
    # Ctrl-C stopped the emulators with the server.
    time.sleep(0.5)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", emulator_port)) != 0


def test_a_port_in_use_is_said_plainly(tmp_path: Path, console: list[Console]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = Console("run", tmp_path, PORT=str(port), HOST="127.0.0.1")
        console.append(run)
        assert run.proc.wait(120) != 0
        run.stop()
    output = run.text()
    assert f"Port {port} is already in use." in output and READY not in output
