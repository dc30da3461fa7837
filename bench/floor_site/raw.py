"""The bare relay floor: a plain ASGI app, no Django, that any ASGI server can serve.

- `/raw/`: the request body is the prompt; the vendor's stream goes back as the response body,
  chunk by chunk as it arrives (bench/floor_site/vendor.py). What the server and one relay hop
  cost, nothing else.
- `/healthz`: 200, for the start-up checks.

bench/floor.py serves it on daphne (through bare.py); bench/peer.py serves this module on daphne
and on uvicorn, so that the two servers' own cost per token is measured on the same app. On
daphne, writes go to the socket as the product's daphne sends them (chatsite/daphne_tuning.py,
`write_at_once`): the floor is the server as we run it.
"""

from __future__ import annotations

import sys
from typing import Any

from bench.floor_site import vendor

if "daphne.cli" in sys.modules:  # on daphne: its writes as the product's daphne makes them
    from chatsite.daphne_tuning import write_at_once

    write_at_once()


async def relay(receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    async for chunk in vendor.stream(body.decode(), 1024):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def healthz(send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":  # uvicorn asks; nothing to set up or tear down
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/raw/":
        await relay(receive, send)
    else:
        await healthz(send)
