"""Refusals of the OpenAI-compatible API, in OpenAI's shape: {"error": {message, type, ...}}."""

from __future__ import annotations

import math
from typing import Any

from django.http import JsonResponse

from conversations.answers.core import failure_message
from conversations.errors import ServiceError
from conversations.usage.accounting import LimitExceeded
from providers.base import ErrorKind, ProviderError


class ApiError(Exception):
    """A refusal in the OpenAI error shape. `message` is safe to show; nothing was charged."""

    def __init__(self, status: int, code: str, message: str, *, param: str | None = None,
                 kind: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.kind = kind or _default_type(status)
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}

    def response(self) -> JsonResponse:
        response = JsonResponse(self.body(), status=self.status)
        if self.retry_after is not None:
            response["Retry-After"] = str(max(1, int(self.retry_after)))
        if self.status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="api"'
        return response


def _default_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "api_error"
    return "invalid_request_error"


def bad(code: str, message: str, param: str | None = None) -> ApiError:
    return ApiError(400, code, message, param=param)


def unauthorized() -> ApiError:
    # One answer for every cause (none, malformed, unknown, revoked, inactive user).
    return ApiError(
        401, "invalid_api_key",
        "Missing or invalid API token. Send 'Authorization: Bearer <token>' with a token from "
        "your profile page (API tokens).")


def limit_error(exc: LimitExceeded) -> ApiError:
    code, kind = {
        "rate_limited": ("rate_limit_exceeded", "rate_limit_error"),
        "too_many_answers": ("too_many_concurrent_requests", "rate_limit_error"),
        "budget_exceeded": ("budget_exceeded", "insufficient_quota"),
        "prompt_too_large": ("prompt_too_large", "invalid_request_error"),
    }.get(exc.code, (exc.code, _default_type(exc.status)))
    param = "messages" if exc.code == "prompt_too_large" else None
    return ApiError(exc.status, code, exc.message, param=param, kind=kind,
                    retry_after=exc.retry_after)


def provider_error(exc: ProviderError) -> ApiError:
    """The provider failed before any output. Our own key problems are never a 401 here."""
    message = failure_message(exc)  # the same words the web page shows
    retry = math.ceil(exc.retry_after) if exc.retry_after else None
    if exc.kind == ErrorKind.RATE_LIMITED:
        return ApiError(429, "upstream_rate_limited", message, retry_after=retry)
    if exc.kind == ErrorKind.QUOTA_EXHAUSTED:
        return ApiError(429, "upstream_quota_exhausted", message, kind="insufficient_quota")
    if exc.kind == ErrorKind.BAD_REQUEST:
        return ApiError(400, "upstream_bad_request", message)
    if exc.kind == ErrorKind.CONTENT_FILTERED:
        return ApiError(400, "content_filter", message)
    if exc.kind == ErrorKind.AUTH:
        return ApiError(502, "upstream_auth", message)
    code = {ErrorKind.TIMEOUT: "upstream_timeout", ErrorKind.TRUNCATED: "upstream_truncated"}
    return ApiError(502, code.get(exc.kind, "upstream_unavailable"), message)


def internal() -> ApiError:
    return ApiError(500, "internal_error", "Something went wrong on our side. Retry.")



# The composer's codes for the image rules (images/rules.py), under the names /v1 documents.
SERVICE_CODES = {"no_images": "images_not_supported"}
SERVICE_HINTS = {"image_required": " Add an image_url part with a data: URL to each user "
                                   "message."}


def service_error(exc: ServiceError, param: str | None = "messages") -> ApiError:
    """A refusal of the product's own rules (shared with the web page), in OpenAI's shape."""
    if isinstance(exc, LimitExceeded):
        return limit_error(exc)
    return ApiError(exc.status, SERVICE_CODES.get(exc.code, exc.code),
                    exc.message + SERVICE_HINTS.get(exc.code, ""), param=param,
                    retry_after=exc.retry_after)
