"""GET /healthz: is every part this process depends on reachable?

For a signed-in superuser the answer also lists each provider's status from its last call or
test (`providers`: ok / failing since ... with the last error kind / not tested / disabled);
nobody else sees it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from chatsite.celery import app
from providers import status as provider_status

CHECK_TIMEOUT = 3.0


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def _check_channel_layer() -> None:
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "healthz.ping"})
    message = await layer.receive(channel)
    if message.get("type") != "healthz.ping":
        raise RuntimeError("channel layer returned another message")


def _check_broker() -> None:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT)


async def _timed(check: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        if asyncio.iscoroutinefunction(check):
            await asyncio.wait_for(check(), CHECK_TIMEOUT)
        else:
            await asyncio.wait_for(sync_to_async(check, thread_sensitive=False)(), CHECK_TIMEOUT)
    except Exception as exc:  # a health check reports every failure instead of raising
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


@never_cache
@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, Any] = {
        "database": await _timed(_check_database_closing),
        "channel_layer": await _timed(_check_channel_layer),
    }
    if settings.REDIS_URL:
        checks["broker"] = await _timed(_check_broker)
    healthy = all(check["ok"] for check in checks.values())
    body: dict[str, Any] = {"status": "ok" if healthy else "unavailable", "checks": checks}
    if checks["database"]["ok"] and getattr(await request.auser(), "is_superuser", False):
        # Superusers also see each provider's status (providers/status.py). A failing provider
        # leaves the process healthy: a load balancer must not take the site out for it.
        body["providers"] = await _provider_summary()
    return JsonResponse(body, status=200 if healthy else 503)


async def _provider_summary() -> list[dict[str, Any]] | dict[str, Any]:
    try:
        summary: list[dict[str, Any]] = await sync_to_async(
            _provider_summary_closing, thread_sensitive=False)()
    except Exception as exc:  # reported like a check, never raised
        return {"ok": False, "error": type(exc).__name__}
    return summary


def _provider_summary_closing() -> list[dict[str, Any]]:
    try:
        return provider_status.summary()
    finally:
        connection.close()


def _check_database_closing() -> None:
    # Runs on a worker thread outside the request cycle: close the connection afterwards.
    try:
        _check_database()
    finally:
        connection.close()
