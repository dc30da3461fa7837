"""Questions no vendor document settles, asked of the vendors (`providers_check --probe`).

Each probe is one small, cheap request sent straight to a configured vendor, outside our clients
(which would refuse it before the network: they follow our reading of the documents). What the
vendor answers is printed so that an admin with real keys can tell us which reading is right;
the emulators hold both readings behind named switches (providers/emulators/README.md).

Never run in tests against anything but the emulators. Keys never appear in the output: every
vendor text goes through `safe_vendor_text` with the account's secrets.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from providers.base import ProviderConfig, ProviderError
from providers.catalogue import CF_VISION_MODEL, DASHSCOPE_MODEL, QIANFAN_MODEL
from providers.dashscope import PATH as DASHSCOPE_PATH
from providers.qianfan import CHAT_PATH, QianfanClient
from providers.redact import safe_vendor_text

PROBE_IMAGE = Path(__file__).resolve().parent.parent / "static" / "img" / "probe.png"
QUESTION = "Reply with the single word: ok"


@dataclass(frozen=True)
class Finding:
    vendor: str
    question: str
    status: int | None  # HTTP status, None when the request could not be sent
    answer: str  # the vendor's code and message, or the start of its text; never a secret


@dataclass(frozen=True)
class Probe:
    vendor: str
    question: str
    run: Callable[[httpx.AsyncClient, ProviderConfig, str], Awaitable[httpx.Response]]


def _image_bytes() -> bytes:
    return PROBE_IMAGE.read_bytes()


def _data_uri() -> str:
    return "data:image/png;base64," + base64.b64encode(_image_bytes()).decode("ascii")


# --- DashScope ------------------------------------------------------------------------------------
def _dashscope(content: list[dict[str, str]]) -> Callable[
        [httpx.AsyncClient, ProviderConfig, str], Awaitable[httpx.Response]]:
    async def run(http: httpx.AsyncClient, config: ProviderConfig, site_url: str
                  ) -> httpx.Response:
        body = {"model": DASHSCOPE_MODEL, "parameters": {"max_new_tokens": 8},
                "input": {"messages": [{"role": "user", "content": [
                    *[{k: v.replace("{site}", site_url) for k, v in p.items()} for p in content],
                    {"text": QUESTION}]}]}}
        return await http.post(config.base_url + DASHSCOPE_PATH, json=body, headers={
            "Authorization": f"Bearer {config.credentials['api_key']}"})

    return run


# --- Qianfan --------------------------------------------------------------------------------------
def _qianfan(extra: dict[str, Any]) -> Callable[
        [httpx.AsyncClient, ProviderConfig, str], Awaitable[httpx.Response]]:
    async def run(http: httpx.AsyncClient, config: ProviderConfig, site_url: str
                  ) -> httpx.Response:
        client = QianfanClient(config)
        try:
            token = await client._token()  # the client's own token path and cache
        finally:
            await client.aclose()
        body = {"messages": [{"role": "user", "content": QUESTION}], **extra}
        return await http.post(config.base_url + CHAT_PATH + QIANFAN_MODEL,
                               params={"access_token": token}, json=body)

    return run


# --- Cloudflare -----------------------------------------------------------------------------------
async def _cloudflare_messages_and_image(http: httpx.AsyncClient, config: ProviderConfig,
                                         site_url: str) -> httpx.Response:
    account = config.credentials["account_id"]
    body = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": QUESTION}],
            "image": list(_image_bytes()), "max_tokens": 8}
    return await http.post(f"{config.base_url}/accounts/{account}/ai/run/{CF_VISION_MODEL}",
                           json=body,
                           headers={"Authorization": f"Bearer {config.credentials['api_token']}"})


PROBES: tuple[Probe, ...] = (
    Probe("dashscope", "two images in one request",
          _dashscope([{"image": "{site}/static/img/probe.png"},
                      {"image": "{site}/static/img/probe.png"}])),
    Probe("dashscope", "an image as a data: URI", _dashscope([{"image": _data_uri()}])),
    Probe("qianfan", "a `system` field", _qianfan({"system": "Be brief."})),
    Probe("qianfan", "`max_output_tokens` (not documented for this model)",
          _qianfan({"max_output_tokens": 8})),
    Probe("cloudflare", "`messages` with a top-level `image` (vision model)",
          _cloudflare_messages_and_image),
)


def _answer(response: httpx.Response, secrets: list[str]) -> str:
    try:
        payload: Any = response.json()
    except (ValueError, UnicodeDecodeError):
        return safe_vendor_text(response.text[:300], secrets)
    if not isinstance(payload, dict):
        return safe_vendor_text(json.dumps(payload)[:300], secrets)
    errors = payload.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):  # Cloudflare
        payload = errors[0]
    code = payload.get("code") or payload.get("error_code") or ""
    message = payload.get("message") or payload.get("error_msg") or ""
    if code or message:
        return safe_vendor_text(f"{code}: {message}", secrets)
    return "accepted: " + safe_vendor_text(json.dumps(payload, ensure_ascii=False)[:160],
                                           secrets)


async def run_probes(configs: dict[str, ProviderConfig], site_url: str) -> list[Finding]:
    """Ask every probe of the vendors configured in `configs` (kind -> config)."""
    findings = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0),
                                 trust_env=False) as http:
        for probe in PROBES:
            config = configs.get(probe.vendor)
            if config is None:
                continue
            secrets = [value for value in config.credentials.values() if value]
            try:
                response = await probe.run(http, config, site_url)
            except (httpx.HTTPError, ProviderError) as exc:
                text = exc.message if isinstance(exc, ProviderError) else type(exc).__name__
                findings.append(Finding(probe.vendor, probe.question, None,
                                        safe_vendor_text(text, secrets)))
                continue
            findings.append(Finding(probe.vendor, probe.question, response.status_code,
                                    _answer(response, secrets)))
    return findings
