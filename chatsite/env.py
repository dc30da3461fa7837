"""Reading configuration from the environment.

Every value is parsed strictly: a malformed value stops the process at start with
`ImproperlyConfigured` naming the variable, instead of silently falling back to a default.
The functions take the environment as an argument so tests can feed them plain dicts.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

Env = Mapping[str, str]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(env: Env, name: str, default: str = "") -> str:
    return env.get(name, default).strip()


def env_bool(env: Env, name: str, default: bool = False) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false, yes/no, on/off).")


def env_choice(env: Env, name: str, choices: tuple[str, ...], default: str) -> str:
    value = env_str(env, name, default).lower() or default
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, not {value!r}.")
    return value


def env_int(env: Env, name: str, default: int, *, minimum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {raw!r}.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}.")
    return value


def env_float(env: Env, name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}.") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}.")
    return value


def env_list(env: Env, name: str, default: list[str] | None = None) -> list[str]:
    raw = env.get(name)
    if raw is None:
        return list(default or [])
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_url(env: Env, name: str, default: str = "", *, schemes: tuple[str, ...]) -> str:
    raw = env_str(env, name, default)
    if not raw:
        return ""
    parts = urlsplit(raw)
    if parts.scheme not in schemes or not parts.netloc:
        allowed = ", ".join(schemes)
        raise ImproperlyConfigured(f"{name} must be an absolute URL with scheme {allowed}.")
    return raw.rstrip("/")


def parse_fernet_keys(raw: str, name: str = "FIELD_ENCRYPTION_KEYS") -> list[str]:
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    if not keys:
        raise ImproperlyConfigured(f"{name} must hold at least one Fernet key.")
    for index, key in enumerate(keys, start=1):
        try:
            Fernet(key.encode())
        except (ValueError, TypeError):
            # Never echo the key itself: it is a secret.
            raise ImproperlyConfigured(
                f"{name}: key number {index} is not a valid Fernet key "
                "(32 url-safe base64-encoded bytes)."
            ) from None
    return keys


def local_secrets(path: Path) -> dict[str, str]:
    """Secrets generated once for embedded mode and kept in a git-ignored file."""
    data: dict[str, str] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            raise ImproperlyConfigured(
                f"{path} is not valid JSON; delete it to regenerate."
            ) from None
    changed = False
    if not data.get("SECRET_KEY"):
        data["SECRET_KEY"] = secrets.token_urlsafe(50)
        changed = True
    if not data.get("FIELD_ENCRYPTION_KEYS"):
        data["FIELD_ENCRYPTION_KEYS"] = Fernet.generate_key().decode()
        changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.chmod(0o600)
        tmp.replace(path)
    return data
