"""The OIDC_* variables: a malformed value stops the process at start, naming the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from chatsite.oidc.config import parse_domains, parse_issuer, parse_team_map
from tests.conftest import ROOT, child_env


def test_the_issuer_must_be_https_except_on_this_machine() -> None:
    assert parse_issuer({"OIDC_ISSUER": "https://id.example.com/realms/corp/"}) == \
        "https://id.example.com/realms/corp"
    assert parse_issuer({"OIDC_ISSUER": "http://127.0.0.1:9300"}) == "http://127.0.0.1:9300"
    assert parse_issuer({}) == ""
    for bad in ("http://id.example.com", "id.example.com", "ftp://x.example",
                "https://id.example.com/?x=1"):
        with pytest.raises(ImproperlyConfigured, match="OIDC_ISSUER"):
            parse_issuer({"OIDC_ISSUER": bad})


def test_domains_and_the_team_map_are_read_strictly() -> None:
    assert parse_domains({"OIDC_ALLOWED_DOMAINS": " Example.com, @corp.example "}) == [
        "example.com", "corp.example"]
    with pytest.raises(ImproperlyConfigured, match="OIDC_ALLOWED_DOMAINS"):
        parse_domains({"OIDC_ALLOWED_DOMAINS": "alice@example.com"})
    assert parse_team_map({"OIDC_TEAM_MAP": "eng=Engineering, ops = Operations and more"}) == {
        "eng": "Engineering", "ops": "Operations and more"}
    for bad in ("eng", "=Engineering", "eng="):
        with pytest.raises(ImproperlyConfigured, match="OIDC_TEAM_MAP"):
            parse_team_map({"OIDC_TEAM_MAP": bad})


def test_sso_only_without_a_provider_stops_the_process_at_start() -> None:
    env = child_env(OIDC_ONLY="1", OIDC_ISSUER="", OIDC_CLIENT_ID="")
    env.pop("DATABASE_URL", None)
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "OIDC_ONLY needs OIDC_ISSUER and OIDC_CLIENT_ID" in result.stderr
