"""The one refusal type of the product's use cases.

Every service, rule and limit refuses with a `ServiceError` (or a subclass): a stable `code`
for programs, a `message` a user can read, the HTTP `status` a door should answer with, and,
for limits that reset, `retry_after` seconds. Nothing was changed when one is raised. The web
pages show the message; `/v1` wraps the same code in OpenAI's error shape.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A refusal with a user-facing message; nothing was changed."""

    def __init__(self, code: str, message: str, status: int = 400, *,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after
