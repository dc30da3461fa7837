"""Two floors on one daphne, for bench/floor.py:

- `/raw/`: the bare ASGI relay of raw.py (no Django): the request body is the prompt; the
  vendor's stream goes back as the response body. What daphne and the relay cost, nothing else.
- `/healthz`: 200, for the start-up check.
- `/django/`: Django's own ASGI handler, no middleware, no database, an async view doing the
  same. What Django's request handling adds to daphne.
"""

from __future__ import annotations

from typing import Any

import django
from django.conf import settings

settings.configure(
    DEBUG=False, SECRET_KEY="floor-bench-only", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
    MIDDLEWARE=[], INSTALLED_APPS=[], DATABASES={}, USE_I18N=False,
)
django.setup(set_prefix=False)

from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

from bench.floor_site import raw, vendor  # noqa: E402


async def relay_view(request: HttpRequest) -> HttpResponseBase:
    return StreamingHttpResponse(vendor.stream(request.body.decode(), 1024),
                                 content_type="text/event-stream")


urlpatterns = [path("django/", relay_view)]
_django = ASGIHandler()


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return
    if scope["path"] == "/healthz":  # bench/relay.py's start-up check
        await raw.healthz(send)
    elif scope["path"] == "/raw/":
        await raw.relay(receive, send)
    else:
        await _django(scope, receive, send)
