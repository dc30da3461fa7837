"""A lockout per username from any address, after more failures than axes' per-address one.

django-axes locks a (username, address) pair after LOGIN_FAILURE_LIMIT failures. Someone who
rotates addresses would get that many tries per address; LOGIN_USERNAME_FAILURE_LIMIT failures
for one username within the cool-off, from wherever, lock that username too (threat T21).
The first administrator's break-glass login is not exempt: the cool-off ends it.
"""

from __future__ import annotations

from typing import Any

from axes.exceptions import AxesBackendPermissionDenied
from axes.helpers import get_lockout_message
from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import Sum
from django.http import HttpRequest
from django.utils import timezone


def username_failures(username: str) -> int:
    since = timezone.now() - settings.AXES_COOLOFF_TIME
    total = AccessAttempt.objects.filter(username=username, attempt_time__gte=since).aggregate(
        failures=Sum("failures_since_start"))["failures"]
    return int(total or 0)


class UsernameLockoutBackend:
    """An authentication backend that only refuses: it never logs anyone in."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None,
                     password: str | None = None, **kwargs: Any) -> None:
        if request is None or not username:
            return None
        if username_failures(username) >= settings.LOGIN_USERNAME_FAILURE_LIMIT:
            response_context = kwargs.get("response_context", {})
            response_context["error"] = get_lockout_message()
            request.axes_locked_out = True  # type: ignore[attr-defined]
            raise AxesBackendPermissionDenied("too many failures for this username")
        return None

    # No get_user(): a backend with one may be recorded in sessions as the one that logged the
    # user in (Django's test client picks the first such backend), and this one logs nobody in.
