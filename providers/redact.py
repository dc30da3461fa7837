"""Keep credentials out of log records and error messages (threat T15).

Qianfan requires its access token in the query string, and httpx logs every request URL at
INFO ("HTTP Request: POST <url>"). `install_log_redaction()` puts a filter on the httpx and
httpcore loggers (and ours) that rewrites each record with:

* the values of `access_token=`, `client_secret=`, `client_id=` (and similar) query parameters,
* `Bearer <token>` and `Authorization:` values,
* every credential string a client registered with `register_secret()`,

replaced by `[REDACTED]`. A logger's filters only see records created on that very logger (not
on its children), so the filter is installed on each logger name httpx and httpcore use.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

REDACTED = "[REDACTED]"
_MIN_SECRET_LENGTH = 6  # shorter strings would scrub ordinary words

_QUERY_SECRET = re.compile(
    r"(?i)\b((?:access_token|client_secret|client_id|api_key|apikey|secret_key|token|key)"
    r"(?:=|%3D))[^&\s\"'#<>]+"
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+")
_AUTH_HEADER = re.compile(r"(?i)(['\"]?authorization['\"]?\s*[:=]\s*['\"]?)(?!bearer\b)[^\s\"',;]+")

LOGGER_NAMES = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
    "providers",
    "providers.cloudflare",
    "providers.dashscope",
    "providers.qianfan",
    "providers.retry",
    "providers.registry",
)

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a credential so it is scrubbed wherever it shows up in a log record."""
    if value and len(value) >= _MIN_SECRET_LENGTH:
        with _lock:
            _secrets.add(value)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with known secrets and credential-looking parameters replaced."""
    with _lock:
        known = sorted({*_secrets, *(s for s in secrets if s)}, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _QUERY_SECRET.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    return _AUTH_HEADER.sub(lambda m: m.group(1) + REDACTED, text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message, exception text and stack text in place; drops nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not hide the record
            message = f"{record.msg!r} {record.args!r}"
        record.msg = scrub(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


_FILTER = RedactingFilter()
# How many loggers existed at the last full pass: loggers are only ever added, so the same
# number means no new logger to filter (every answer's client asks; issue 16).
_loggers_seen = -1


def install_log_redaction(extra_logger_names: Iterable[str] = ()) -> None:
    """Idempotent: attach the filter to every logger httpx, httpcore and we log on."""
    global _loggers_seen
    extra = tuple(extra_logger_names)
    known = len(logging.root.manager.loggerDict)
    if not extra and known == _loggers_seen:
        return
    names = {*LOGGER_NAMES, *extra}
    names.update(
        name
        for name in list(logging.root.manager.loggerDict)
        if name.startswith(("httpx.", "httpcore.", "providers."))
    )
    for name in names:
        log = logging.getLogger(name)
        if _FILTER not in log.filters:
            log.addFilter(_FILTER)
    if not extra:
        _loggers_seen = len(logging.root.manager.loggerDict)  # with any `getLogger` made above


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def safe_vendor_text(text: object, secrets: Iterable[str] = (), limit: int = 300) -> str:
    """A vendor's error text made fit for a user: scrubbed, one line, bounded in length."""
    clean = _CONTROL.sub(" ", scrub(str(text), secrets)).strip()
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"
