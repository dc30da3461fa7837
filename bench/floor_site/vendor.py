"""The one vendor call every floor arm makes: the Cloudflare stream, relayed as it arrives.

One `httpx.AsyncClient` per process, kept warm, as the product's provider pool keeps one.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

import httpx

_client: httpx.AsyncClient | None = None
MODEL = "@cf/meta/llama-3.2-3b-instruct"


def client() -> httpx.AsyncClient:
    global _client
    if _client is None:
        _client = httpx.AsyncClient(timeout=120.0)
    return _client


def url() -> str:
    base = os.environ["CLOUDFLARE_BASE_URL"].rstrip("/")
    return f"{base}/accounts/{os.environ['CLOUDFLARE_ACCOUNT_ID']}/ai/run/{MODEL}"


async def stream(prompt: str, max_tokens: int) -> AsyncIterator[bytes]:
    """The vendor's SSE bytes, chunk by chunk, unchanged."""
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "stream": True,
                       "max_tokens": max_tokens}).encode()
    headers = {"Authorization": f"Bearer {os.environ['CLOUDFLARE_API_TOKEN']}",
               "Accept": "text/event-stream", "Content-Type": "application/json"}
    async with client().stream("POST", url(), content=body, headers=headers) as response:
        async for chunk in response.aiter_raw():
            yield chunk
