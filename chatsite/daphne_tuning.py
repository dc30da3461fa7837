"""A websocket message over daphne's size limit is failed with a close frame, not a dropped line.

daphne (through autobahn) fails an oversized message (over 1 MiB) by dropping the TCP
connection, autobahn's `failByDrop` default: the browser sees 1006 and cannot tell why. With
`failByDrop` off, the connection is failed the way RFC 6455 describes: a close frame with 1009
(message too big), then the close. daphne has no option for it, so its factory's defaults are
set here, once, in a daphne server process (chatsite/asgi.py).
"""

from __future__ import annotations

from typing import Any

from daphne.ws_protocol import WebSocketFactory


def close_instead_of_drop() -> None:
    if getattr(WebSocketFactory, "_close_on_failure", False):
        return
    original = WebSocketFactory.resetProtocolOptions

    def reset_protocol_options(self: Any) -> None:
        original(self)
        self.failByDrop = False

    WebSocketFactory.resetProtocolOptions = reset_protocol_options  # type: ignore[method-assign]
    WebSocketFactory._close_on_failure = True  # type: ignore[attr-defined]
