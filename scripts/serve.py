"""`make run` and `make demo`: sync the providers, start daphne, and say so once it listens.

    python scripts/serve.py [--demo] [--host 127.0.0.1] [--port 8000] [--emulator-port 9100]

One clear line when the server actually accepts connections (daphne's own start-up lines are
quiet at our log level), a hint to try `make demo` when no provider has keys, and with
`--demo` the local provider emulators started first, their fake credentials and the magic
markers that script an answer printed here rather than hidden in a log. Ctrl-C (or SIGTERM)
stops daphne (it drains its answers first) and the emulators.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from providers.emulators.state import Credentials  # noqa: E402  (after the path is set)

MARKERS = [
    ("[[emu:tokens n=300 rate=20]]", "a long answer, 20 tokens a second (try Stop)"),
    ("[[emu:error-after n=3]]", "the provider fails after three tokens"),
    ("[[emu:429-before]]", "the provider refuses with a rate limit"),
    ("[[emu:500-before]]", "the provider is down"),
]


def say(line: str = "") -> None:
    print(line, flush=True)


def wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes],
                  timeout: float = 60.0) -> bool:
    """True once something accepts connections on host:port; False if `proc` died first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.1)
    return False


def emulator_env(port: int) -> dict[str, str]:
    creds = Credentials()
    base = f"http://127.0.0.1:{port}"
    return {
        "CLOUDFLARE_BASE_URL": f"{base}/client/v4",
        "CLOUDFLARE_ACCOUNT_ID": creds.cloudflare_account_id,
        "CLOUDFLARE_API_TOKEN": creds.cloudflare_api_token,
        "DASHSCOPE_BASE_URL": f"{base}/api/v1",
        "DASHSCOPE_API_KEY": creds.dashscope_api_key,
        "QIANFAN_BASE_URL": base,
        "QIANFAN_AK": creds.qianfan_ak,
        "QIANFAN_SK": creds.qianfan_sk,
    }


def demo_lines(port: int, log: Path) -> list[str]:
    creds = Credentials()
    lines = [
        f"Demo: every model answers from local emulators of the three vendors on "
        f"http://127.0.0.1:{port} (their log: {log}).",
        "  The providers are set up with the emulators' fake credentials:",
        f"    Cloudflare  account {creds.cloudflare_account_id}  token "
        f"{creds.cloudflare_api_token}",
        f"    DashScope   API key {creds.dashscope_api_key}",
        f"    Qianfan     AK {creds.qianfan_ak}  SK {creds.qianfan_sk}",
        "  Type a marker into a message to script the answer:",
    ]
    width = max(len(marker) for marker, _ in MARKERS)
    lines += [f"    {marker:<{width}}  {what}" for marker, what in MARKERS]
    return lines


def var_dir() -> Path:
    return Path(os.environ.get("VAR_DIR") or ROOT / "var")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--emulator-port", type=int,
                        default=int(os.environ.get("EMULATOR_PORT", "9100")))
    args = parser.parse_args()
    python = sys.executable
    url = f"http://{args.host}:{args.port}/"
    env = dict(os.environ)
    env.setdefault("SITE_URL", url.rstrip("/"))
    env.setdefault("DRAIN_SECONDS", "5")
    children: list[subprocess.Popen[bytes]] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        # Ctrl-C reaches every process of the terminal's group already; a SIGTERM sent to us
        # alone is passed on, so that daphne drains (the emulators stop after it, below).
        if signum == signal.SIGTERM:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    emulators = None
    log = var_dir() / "emulators.log"
    try:
        if args.demo:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("wb") as handle:
                # Its own session: Ctrl-C reaches daphne, which drains its answers for a few
                # seconds; the emulators must keep answering meanwhile, and stop after it.
                emulators = subprocess.Popen(
                    [python, "manage.py", "run_emulators", "--port", str(args.emulator_port)],
                    cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                    start_new_session=True)
            if not wait_for_port("127.0.0.1", args.emulator_port, emulators, timeout=30):
                say(f"The provider emulators did not start on port {args.emulator_port}; "
                    f"see {log}.")
                return 1
            env.update(emulator_env(args.emulator_port))
        # The command prints what it changed; the same lines logged again would be noise.
        sync = subprocess.run([python, "manage.py", "sync_providers"], cwd=ROOT,
                              env={**env, "LOG_LEVEL": "WARNING"}, check=False)
        if sync.returncode != 0:
            return sync.returncode
        probe = "127.0.0.1" if args.host in {"0.0.0.0", "::", ""} else args.host
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((probe, args.port)) == 0:
                say(f"Port {args.port} is already in use. Stop what runs there, or choose "
                    f"another port: make run PORT={args.port + 1}")
                return 1
        server = subprocess.Popen(
            [python, "-m", "daphne", "-b", args.host, "-p", str(args.port),
             "chatsite.asgi:application"], cwd=ROOT, env=env)
        children.append(server)
        if wait_for_port(probe, args.port, server):
            say()
            say(f"Llama Chat is ready: {url}  (Ctrl-C stops it)")
            if args.demo:
                for line in demo_lines(args.emulator_port, log):
                    say(line)
            say()
        else:
            say(f"Llama Chat did not start on {args.host}:{args.port}: see the lines above.")
        while True:
            try:
                return server.wait()
            except KeyboardInterrupt:  # pragma: no cover - the handler above takes SIGINT
                continue
    finally:
        if emulators is not None and emulators.poll() is None:
            emulators.terminate()
            try:
                emulators.wait(5)
            except subprocess.TimeoutExpired:
                emulators.kill()


if __name__ == "__main__":
    sys.exit(main())
