"""Provider credentials at rest: MultiFernet over FIELD_ENCRYPTION_KEYS.

The first key encrypts; every key decrypts, so rotation is: put a new key first, run
`manage.py rotate_keys`, then drop the old key.
"""

from __future__ import annotations

import json
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.views.decorators.debug import sensitive_variables


class CredentialsUnreadable(Exception):
    """Stored credentials cannot be decrypted with the configured keys: re-enter them."""


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key.encode()) for key in keys])


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.FIELD_ENCRYPTION_KEYS))


@sensitive_variables("values")
def encrypt_json(values: dict[str, str]) -> str:
    return fernet().encrypt(json.dumps(values, sort_keys=True).encode()).decode()


def decrypt_json(token: str) -> dict[str, str]:
    if not token:
        return {}
    return dict(_decrypted(token, tuple(settings.FIELD_ENCRYPTION_KEYS)))


@lru_cache(maxsize=64)
@sensitive_variables("data")
def _decrypted(token: str, keys: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    # Every answer reads its provider's keys: decrypted once per ciphertext and key set and
    # kept in this process's memory (where the clients hold them anyway). A new key or a
    # rotated key list is a new cache entry; a failure is not cached (lru_cache skips raises).
    try:
        data = json.loads(_fernet(keys).decrypt(token.encode()))
    except (InvalidToken, ValueError):  # wrong key, tampered or truncated token, not JSON
        raise CredentialsUnreadable from None
    if not isinstance(data, dict):
        raise CredentialsUnreadable
    return tuple((str(k), str(v)) for k, v in data.items())


def rotate(token: str) -> str:
    """Re-encrypt under the first key (raises CredentialsUnreadable for a foreign token)."""
    try:
        return fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise CredentialsUnreadable from None


def mask(secret: str) -> str:
    """What an admin may see of a secret: its length class and last four characters."""
    if not secret:
        return ""
    if len(secret) <= 8:
        return "•" * 4
    return "•" * 8 + secret[-4:]
