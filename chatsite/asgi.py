"""One ASGI application for HTTP and websockets, served by daphne."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
# Django must be set up before anything imports models (the consumers do). The handler is
# Django's, with request threads reused (chatsite/http_handler.py).
from chatsite.http_handler import get_asgi_application

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import OriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from chatsite.daphne_tuning import (  # noqa: E402
    hand_over_sooner,
    redact_access_log,
    websocket_defaults,
    write_at_once,
)
from chatsite.heap import freeze_startup_heap  # noqa: E402
from conversations.answers.drain import install_on_daphne  # noqa: E402
from conversations.answers.jobs import (  # noqa: E402
    CaptureLoopMiddleware,
    start_reaper_thread,
)
from conversations.web.routing import websocket_urlpatterns  # noqa: E402

application = CaptureLoopMiddleware(ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Scheme, host and port of the Origin against our own origins (threat T19).
        "websocket": OriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
            settings.WEBSOCKET_ALLOWED_ORIGINS,
        ),
    }
))

# Answers a dead process left behind are found from the start, not at the first visit: in a
# daphne server process (its command line module is loaded), not wherever this is imported.
if "daphne.cli" in sys.modules:
    start_reaper_thread()
    websocket_defaults(compress=settings.WEBSOCKET_COMPRESSION)
    write_at_once()
    hand_over_sooner()
    redact_access_log()
    install_on_daphne()  # SIGTERM drains the answers in flight (DRAIN_SECONDS)
    freeze_startup_heap()  # last: everything imported above is kept out of full GC passes
