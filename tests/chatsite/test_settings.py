"""Settings come from the environment; malformed values stop the process at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from chatsite import env as envmod

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("true", True), ("YES", True),
                                                ("on", True), ("0", False), ("off", False),
                                                ("", False), ("No", False)])
def test_it_parses_booleans(raw: str, expected: bool) -> None:
    assert envmod.env_bool({"X": raw}, "X") is expected


def test_it_refuses_a_malformed_boolean() -> None:
    with pytest.raises(ImproperlyConfigured, match="X must be a boolean"):
        envmod.env_bool({"X": "maybe"}, "X")


def test_it_parses_integers_and_refuses_garbage_and_small_values() -> None:
    assert envmod.env_int({"N": " 42 "}, "N", 1) == 42
    assert envmod.env_int({}, "N", 7) == 7
    with pytest.raises(ImproperlyConfigured, match="N must be a whole number"):
        envmod.env_int({"N": "4x"}, "N", 1)
    with pytest.raises(ImproperlyConfigured, match="at least 10"):
        envmod.env_int({"N": "3"}, "N", 1, minimum=10)


def test_it_splits_comma_lists() -> None:
    assert envmod.env_list({"H": "a.example, b.example,,"}, "H") == ["a.example", "b.example"]
    assert envmod.env_list({}, "H", ["x"]) == ["x"]


def test_it_requires_absolute_urls_with_known_schemes() -> None:
    assert envmod.env_url({"U": "https://chat.example.com/"}, "U", schemes=("https",)) == (
        "https://chat.example.com")
    for bad in ["chat.example.com", "ftp://x", "https://"]:
        with pytest.raises(ImproperlyConfigured, match="U must be an absolute URL"):
            envmod.env_url({"U": bad}, "U", schemes=("http", "https"))


def test_it_validates_fernet_keys_without_echoing_them() -> None:
    good = Fernet.generate_key().decode()
    assert envmod.parse_fernet_keys(f"{good}, {good}") == [good, good]
    with pytest.raises(ImproperlyConfigured) as info:
        envmod.parse_fernet_keys(f"{good},not-a-key-secret-value")
    assert "key number 2" in str(info.value)
    assert "not-a-key-secret-value" not in str(info.value)


def test_it_generates_local_secrets_once_and_keeps_them(tmp_path: Path) -> None:
    path = tmp_path / "var" / "local-secrets.json"
    first = envmod.local_secrets(path)
    second = envmod.local_secrets(path)
    assert first == second
    assert len(first["SECRET_KEY"]) >= 50
    Fernet(first["FIELD_ENCRYPTION_KEYS"].encode())
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert json.loads(path.read_text()) == first


def _import_settings(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "FIELD_ENCRYPTION_KEYS",
                          "APP_ENV", "DEBUG", "ALLOWED_HOSTS", "SITE_URL"}}
    clean.update({"VAR_DIR": str(tmp_path / "var"), "DJANGO_SETTINGS_MODULE": "chatsite.settings"})
    clean.update(env)
    code = ("import django; django.setup(); from django.conf import settings as s; "
            "import json; print(json.dumps({'db': s.DATABASES['default']['ENGINE'], "
            "'layer': s.CHANNEL_LAYERS['default']['BACKEND'], 'debug': s.DEBUG, "
            "'secure': s.SESSION_COOKIE_SECURE, 'hsts': s.SECURE_HSTS_SECONDS, "
            "'hosts': s.ALLOWED_HOSTS, 'pool': 'pool' in s.DATABASES['default']['OPTIONS'], "
            "'conn_max_age': s.DATABASES['default'].get('CONN_MAX_AGE')}))")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean,
                          capture_output=True, text=True, timeout=60)


def test_it_starts_on_embedded_defaults(tmp_path: Path) -> None:
    result = _import_settings({}, tmp_path)
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["db"].endswith("sqlite3")
    assert values["layer"] == "chatsite.layers.RateLimitedCleanupLayer"  # in-memory
    assert values["debug"] is False
    assert (tmp_path / "var" / "local-secrets.json").exists()


def test_it_uses_postgres_with_a_pool_and_redis_when_configured(tmp_path: Path) -> None:
    result = _import_settings({"DATABASE_URL": "postgres://u@127.0.0.1:5432/chat",
                               "REDIS_URL": "redis://127.0.0.1:6379/0"}, tmp_path)
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["db"] == "django.db.backends.postgresql"
    assert values["pool"] is True
    assert values["conn_max_age"] == 0
    assert values["layer"] == "channels_redis.pubsub.RedisPubSubChannelLayer"


def test_the_redis_channel_layer_can_be_the_list_based_core_one(tmp_path: Path) -> None:
    result = _import_settings({"REDIS_URL": "redis://127.0.0.1:6379/0",
                               "CHANNEL_LAYER": "core"}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["layer"] == "channels_redis.core.RedisChannelLayer"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEBUG": "perhaps"}, "DEBUG must be a boolean"),
        ({"DATABASE_URL": "mysql://x@y/z"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL must be an absolute URL"),
        ({"FIELD_ENCRYPTION_KEYS": "short"}, "FIELD_ENCRYPTION_KEYS"),
        ({"TIME_ZONE": "Mars/Olympus"}, "TIME_ZONE"),
        ({"LANGUAGE_CODE": "fr"}, "LANGUAGE_CODE"),
        ({"APP_ENV": "staging"}, "APP_ENV"),
        ({"APP_ENV": "production"}, "SECRET_KEY is required in production"),
        ({"CHANNEL_CAPACITY": "lots"}, "CHANNEL_CAPACITY"),
        ({"REDIS_URL": "redis://127.0.0.1:6379/0", "CHANNEL_LAYER": "kafka"}, "CHANNEL_LAYER"),
        ({"REDIS_URL": "redis://127.0.0.1:6379/0", "REDIS_MAX_CONNECTIONS": "1"},
         "REDIS_MAX_CONNECTIONS"),
        ({"CSRF_TRUSTED_ORIGINS": "chat.example.com"}, "CSRF_TRUSTED_ORIGINS"),
    ],
)
def test_it_fails_loudly_on_malformed_configuration(env: dict[str, str], message: str,
                                                    tmp_path: Path) -> None:
    result = _import_settings(env, tmp_path)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def test_production_requires_keys_and_turns_on_secure_defaults(tmp_path: Path) -> None:
    env = {"APP_ENV": "production", "SECRET_KEY": "s" * 60,
           "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
           "SITE_URL": "https://chat.example.com"}
    result = _import_settings(env, tmp_path)
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["secure"] is True
    assert values["hsts"] >= 31_536_000
    assert values["hosts"] == ["chat.example.com"]
    assert not (tmp_path / "var" / "local-secrets.json").exists()


def test_check_deploy_is_clean_under_production_settings(tmp_path: Path) -> None:
    env = {**os.environ, "APP_ENV": "production",
           "SECRET_KEY": "k3y-" + "x9Q!" * 16, "VAR_DIR": str(tmp_path / "var"),
           "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
           "SITE_URL": "https://chat.example.com"}
    env.pop("DATABASE_URL", None)
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy",
                             "--fail-level", "WARNING"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_daphne_access_log_lines_hide_capability_paths_and_sign_in_codes() -> None:
    import io

    from daphne.access import AccessLogGenerator

    from chatsite.daphne_tuning import redact_access_log

    redact_access_log()
    stream = io.StringIO()
    log = AccessLogGenerator(stream)
    for path in ("/s/SHARETOKEN123/", "/invite/INVITETOKEN456/", "/i/SIGNEDIMAGE789",
                 "/accounts/sso/callback/?code=THECODE&state=THESTATE"):
        log("http", "complete", {"client": ["127.0.0.1", 1], "method": "GET", "path": path,
                                 "status": 200, "size": 10})
    written = stream.getvalue()
    for secret in ("SHARETOKEN123", "INVITETOKEN456", "SIGNEDIMAGE789", "THECODE", "THESTATE"):
        assert secret not in written
    assert written.count("[redacted]") == 5
