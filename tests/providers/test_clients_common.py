from __future__ import annotations

import json
import socket
from dataclasses import replace
from typing import Any

import pytest

from providers.base import ChatRequest, ErrorKind, ImagePart, Message, ProviderConfig, ProviderError
from providers.catalogue import CF_TEXT_MODEL, CF_VISION_MODEL, DASHSCOPE_MODEL, QIANFAN_MODEL
from providers.client import json_object, vendor_url
from providers.cloudflare import CloudflareClient
from providers.dashscope import DashScopeClient
from providers.emulators import EmulatorServer
from providers.emulators.answer import build_answer
from providers.emulators.faults import Plan
from providers.qianfan import QianfanClient
from providers.registry import CLIENT_CLASSES, get_client, is_official_base_url

from .conftest import ClientFactory, Drain

MODELS = {"cloudflare": CF_TEXT_MODEL, "dashscope": DASHSCOPE_MODEL, "qianfan": QIANFAN_MODEL}
BAD_PARAMS = {
    "cloudflare": {"temperature": 5.5},
    "dashscope": {"top_p": 1.5},
    "qianfan": {"penalty_score": 3},
}


def request_for(kind: str, image: ImagePart, **params: object) -> ChatRequest:
    images = (image,) if kind == "dashscope" else ()
    return ChatRequest(MODELS[kind], (Message("user", "Hello", images),), params=params)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", sorted(MODELS))
async def test_out_of_range_params_are_refused_before_any_network_call(
    kind: str, emulator: EmulatorServer, make_client: ClientFactory, run: Drain, image: ImagePart
) -> None:
    outcome = await run(make_client(kind), request_for(kind, image, **BAD_PARAMS[kind]))

    assert outcome.error is not None and outcome.error.kind is ErrorKind.BAD_REQUEST
    (name,) = BAD_PARAMS[kind]
    assert repr(name) in outcome.error.message
    assert emulator.requests == []


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", sorted(MODELS))
async def test_a_model_of_another_vendor_is_refused_before_any_network_call(
    kind: str, emulator: EmulatorServer, make_client: ClientFactory, run: Drain, image: ImagePart
) -> None:
    other = CF_VISION_MODEL if kind != "cloudflare" else QIANFAN_MODEL
    outcome = await run(make_client(kind), replace(request_for(kind, image), model=other))

    assert outcome.error is not None and outcome.error.kind is ErrorKind.BAD_REQUEST
    assert emulator.requests == []


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", sorted(MODELS))
async def test_complete_returns_the_whole_text_and_the_finish(
    kind: str, make_client: ClientFactory, image: ImagePart
) -> None:
    text, finish = await make_client(kind).complete(request_for(kind, image))

    assert text == "".join(build_answer("Hello", Plan()).tokens)
    assert finish.reason == "stop"
    assert finish.usage is not None


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", sorted(MODELS))
async def test_an_unreachable_host_is_unavailable_after_bounded_retries(
    kind: str, provider_configs: dict[str, ProviderConfig], run: Drain, image: ImagePart
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = replace(provider_configs[kind], base_url=f"http://127.0.0.1:{port}/v1")
    client = get_client(config)
    outcome = await run(client, request_for(kind, image))
    await client.aclose()

    assert outcome.error is not None and outcome.error.kind is ErrorKind.UNAVAILABLE
    assert str(port) not in outcome.error.message  # no URL in user-facing text


@pytest.mark.asyncio
async def test_the_registry_builds_each_kind_and_refuses_unknown_ones(
    provider_configs: dict[str, ProviderConfig],
) -> None:
    assert {
        "cloudflare": CloudflareClient,
        "dashscope": DashScopeClient,
        "qianfan": QianfanClient,
    } == CLIENT_CLASSES
    for kind, config in provider_configs.items():
        client = get_client(config)
        assert isinstance(client, CLIENT_CLASSES[kind])
        await client.aclose()
    with pytest.raises(ProviderError) as caught:
        get_client(replace(provider_configs["cloudflare"], kind="openai"))
    assert caught.value.kind is ErrorKind.BAD_REQUEST


def test_a_missing_credential_is_an_auth_error_naming_the_key(
    provider_configs: dict[str, ProviderConfig],
) -> None:
    with pytest.raises(ProviderError) as caught:
        get_client(replace(provider_configs["qianfan"], credentials={"api_key": "ak-only-123"}))
    assert caught.value.kind is ErrorKind.AUTH
    assert "'secret_key'" in caught.value.message


def test_official_base_urls_are_recognised_and_lookalikes_are_not() -> None:
    assert is_official_base_url("cloudflare", "https://api.cloudflare.com/client/v4")
    assert is_official_base_url("qianfan", "https://aip.baidubce.com")
    assert is_official_base_url("dashscope", "https://dashscope-intl.aliyuncs.com/api/v1")
    assert not is_official_base_url("cloudflare", "http://api.cloudflare.com/client/v4")
    assert not is_official_base_url("cloudflare", "https://api.cloudflare.com.evil.example/v4")
    assert not is_official_base_url("qianfan", "https://api.cloudflare.com/client/v4")


def _loaded_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@pytest.mark.parametrize("text", [
    '{"response":"Hi"}', "{}", ' {"a":1} ', '{"a":1}x', '{"a":1}}', '{"a":1} {', "{", "{]}",
    '{"a":1,}', '{"a":"x\ny"}', '{"a":NaN}', '{"a":"\\ud800"}', "[1]", '"{}"', "",
    '{"a":{"b":[1,2,{"c":null}]}}', '\ufeff{"a":1}',
])
def test_a_stream_event_is_read_as_json_loads_reads_it(text: str) -> None:
    assert json_object(text) == _loaded_object(text)


def test_a_vendor_endpoint_is_parsed_once_and_reads_as_its_text() -> None:
    text = "https://api.cloudflare.com/client/v4/accounts/abc/ai/run/@cf/meta/llama-3.2-3b-instruct"
    url = vendor_url(text)
    assert vendor_url(text) is url
    assert str(url) == text and url.path.endswith("/@cf/meta/llama-3.2-3b-instruct")
