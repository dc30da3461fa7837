"""A logging filter that removes secrets from every record before it is written."""

from __future__ import annotations

import logging
import re

_PATTERNS = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[redacted]"),
    (re.compile(r"(?i)((?:access_token|client_secret|client_id|api_key|token)=)[^&\s'\"]+"),
     r"\1[redacted]"),
    # The sign-in callback's query (?code=...&state=...), not error_code= and the like.
    (re.compile(r"([?&](?:code|state)=)[^&\s'\"]+"), r"\1[redacted]"),
    # Paths that are capabilities: share links, invitations, signed image addresses.
    (re.compile(r"((?:^|[\s\"'])/(?:s|invite|i)/)[^/\s?\"']+"), r"\1[redacted]"),
]


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
