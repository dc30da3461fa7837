"""Django's ASGI handler, with request threads kept between requests.

Django runs each HTTP request's sync code (sync views, sync middleware, ORM calls through
`sync_to_async`) in a `ThreadSensitiveContext` of its own, which makes a new thread per request
and drops it at the end. Every request then paid for starting a thread and, on SQLite, for
opening a connection in it (registering ~30 functions and running the PRAGMAs): measured with
py-spy as ~10 % of the app's CPU on the `/v1` path at 32 streams (issue 16).

Here each request still gets a thread of its own for as long as it runs (thread-sensitive code
of two requests never shares a thread, as Django intends), but the thread is taken from a pool
of idle single-thread executors and returned afterwards, keeping its database connection
(`CONN_MAX_AGE`; on PostgreSQL connections go back to psycopg's pool at the end of every
request, as before). asgiref's `ThreadSensitiveContext(executor=...)` is the public way to
supply the executor.

Requests for sync views (every page and form; the `/v1` API views are async) run Django's sync
handler, middleware and view together, in that thread: one hop from the loop and one back.
Django's async chain adapts each sync-style middleware on its own, so a POST used to cross
between the loop and a thread about twenty times, and under load every return to the loop
waited behind the tokens of every stream in flight (the 64-POST burst of issue 16).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext, iscoroutinefunction, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.http import FileResponse, HttpRequest, HttpResponseBase
from django.urls import Resolver404, get_resolver

MAX_IDLE = 32  # idle request threads kept; more concurrent requests still get their own


class _ExecutorPool:
    def __init__(self, max_idle: int) -> None:
        self._idle: list[ThreadPoolExecutor] = []
        self._lock = threading.Lock()
        self._max_idle = max_idle

    def acquire(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")

    def release(self, executor: ThreadPoolExecutor) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(executor)
                return
        executor.shutdown(wait=False)

    def idle(self) -> int:
        with self._lock:
            return len(self._idle)


executors = _ExecutorPool(MAX_IDLE)


def runs_async(path: str) -> bool:
    """Whether the view at `path` is an async view (else, or when nothing matches: sync)."""
    try:
        match = get_resolver().resolve(path)
    except Resolver404:
        return False
    return iscoroutinefunction(match.func)


class PooledThreadsASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self._sync = BaseHandler()
        self._sync.load_middleware(is_async=False)

    async def run_get_response(self, request: HttpRequest) -> HttpResponseBase:
        if runs_async(request.path_info):
            response: HttpResponseBase = await super().run_get_response(request)
            return response
        response = await sync_to_async(self._sync.get_response, thread_sensitive=True)(request)
        response._handler_class = self.__class__  # type: ignore[attr-defined]  # as Django does
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size
        return response

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = executors.acquire()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            executors.release(executor)


def get_asgi_application() -> PooledThreadsASGIHandler:
    """django.core.asgi.get_asgi_application, with the pooled handler."""
    django.setup(set_prefix=False)
    return PooledThreadsASGIHandler()
