"""A websocket message over daphne's size limit is failed with a close frame, not a dropped line.

daphne (through autobahn) fails an oversized message (over 1 MiB) by dropping the TCP
connection, autobahn's `failByDrop` default: the browser sees 1006 and cannot tell why. With
`failByDrop` off, the connection is failed the way RFC 6455 describes: a close frame with 1009
(message too big), then the close. daphne has no option for it, so its factory's defaults are
set here, once, in a daphne server process (chatsite/asgi.py).

The server then waits for the client's closing frame before it closes the TCP connection.
autobahn waits 1 s by default; a client still writing its oversized message (10 MB from a phone,
or from a busy machine) is not done by then, the line is cut with the client's data unread, the
kernel answers with a reset, and the client loses the close frame it had not read yet. Five
seconds lets it finish writing and read why it was closed.
"""

from __future__ import annotations

from typing import Any

from daphne.access import AccessLogGenerator
from daphne.ws_protocol import WebSocketFactory

from chatsite.logging import redact

CLOSE_HANDSHAKE_SECONDS = 5


def close_instead_of_drop() -> None:
    if getattr(WebSocketFactory, "_close_on_failure", False):
        return
    original = WebSocketFactory.resetProtocolOptions

    def reset_protocol_options(self: Any) -> None:
        original(self)
        self.failByDrop = False
        self.closeHandshakeTimeout = CLOSE_HANDSHAKE_SECONDS

    WebSocketFactory.resetProtocolOptions = reset_protocol_options  # type: ignore[method-assign]
    WebSocketFactory._close_on_failure = True  # type: ignore[attr-defined]


def redact_access_log() -> None:
    """daphne's access log (stdout at its default verbosity) writes every request path; share
    links, invitations and signed image addresses carry their secret in the path, and the
    sign-in callback its code in the query. They are written redacted, as our own logs are."""
    if getattr(AccessLogGenerator, "_redacted", False):
        return
    original = AccessLogGenerator.write_entry

    def write_entry(self: Any, host: Any, date: Any, request: str, *args: Any,
                    **kwargs: Any) -> None:
        original(self, host, date, redact(request), *args, **kwargs)

    AccessLogGenerator.write_entry = write_entry  # type: ignore[method-assign]
    AccessLogGenerator._redacted = True  # type: ignore[attr-defined]
