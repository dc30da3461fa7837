"""Start the test provider as a process and drive its switches (used by tests/sso and e2e)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import requests

from tests.conftest import ROOT, free_port, wait_for_port

CLIENT_ID = "llamachat"
CLIENT_SECRET = "test-client-secret-0123456789"
PASSWORD = "idp-password-42"


def person(username: str, email: str, *, verified: bool = True, **claims: Any) -> dict[str, Any]:
    return {"password": PASSWORD, "email": email, "email_verified": verified, **claims}


DEFAULT_USERS = {
    "dana": person("dana", "dana@corp.example", groups=["eng"], given_name="Dana",
                   family_name="Scully"),
    "erin": person("erin", "erin@other.example", groups=["eng"]),
    "alice": person("alice", "alice@example.com", sub="sub-alice"),
}


class ProviderProcess:
    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.oidc_provider.server", "--port", str(self.port),
             "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc)

    def reset(self, users: dict[str, dict[str, Any]] | None = None) -> None:
        body = {"users": users if users is not None else DEFAULT_USERS}
        requests.post(self.issuer + "/_test/reset", json=body, timeout=5).raise_for_status()

    def fault(self, **switches: Any) -> None:
        requests.post(self.issuer + "/_test/faults", json=switches, timeout=5).raise_for_status()

    def stats(self) -> dict[str, int]:
        result: dict[str, int] = requests.get(self.issuer + "/_test/stats", timeout=5).json()
        return result

    def env(self, **extra: str) -> dict[str, str]:
        """The OIDC_* an administrator would set for this provider."""
        return {"OIDC_ISSUER": self.issuer, "OIDC_CLIENT_ID": CLIENT_ID,
                "OIDC_CLIENT_SECRET": CLIENT_SECRET, **extra}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()
