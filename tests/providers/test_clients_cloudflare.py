from __future__ import annotations

import pytest

from providers.base import ChatRequest, ErrorKind, ImagePart, Message
from providers.catalogue import CF_TEXT_MODEL, CF_VISION_MODEL
from providers.emulators import EmulatorServer, Fault
from providers.emulators.answer import build_answer
from providers.emulators.faults import Plan

from .conftest import PNG, ClientFactory, Drain


def model_calls(emulator: EmulatorServer) -> list:  # type: ignore[type-arg]
    return [r for r in emulator.requests if r.vendor == "cloudflare" and r.endpoint == "model"]


def answer(prompt: str, **plan: object) -> list[str]:
    return list(build_answer(prompt, Plan(**plan)).tokens)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_it_streams_deltas_usage_and_finish_in_the_messages_shape(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    request = ChatRequest(
        model=CF_TEXT_MODEL,
        system="Be brief.",
        messages=(
            Message("user", "Hi"),
            Message("assistant", "Hello!"),
            Message("user", "What is a llama?"),
        ),
        params={"temperature": 0.2, "top_k": 5},
    )
    outcome = await run(make_client("cloudflare"), request)

    tokens = answer("What is a llama?")
    assert outcome.deltas == tokens
    assert outcome.finish is not None
    assert outcome.finish.reason == "stop"
    assert outcome.finish.usage is not None
    assert outcome.finish.usage.completion_tokens == len(tokens)
    assert outcome.finish.usage.prompt_tokens
    assert outcome.finish.request_id and outcome.finish.request_id.endswith("-EMU")  # cf-ray

    (call,) = model_calls(emulator)
    creds = emulator.credentials
    assert call.path == (
        f"/client/v4/accounts/{creds.cloudflare_account_id}/ai/run/@cf/meta/llama-3.2-3b-instruct"
    )
    assert call.headers["authorization"] == f"Bearer {creds.cloudflare_api_token}"
    assert call.json == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "What is a llama?"},
        ],
        "temperature": 0.2,
        "top_k": 5,
        "stream": True,
        "max_tokens": 1024,
    }


@pytest.mark.asyncio
async def test_it_always_sends_max_tokens_and_reports_length_when_it_is_hit(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    request = ChatRequest(
        model=CF_TEXT_MODEL, messages=(Message("user", "count"),), params={"max_tokens": 4}
    )
    outcome = await run(make_client("cloudflare"), request)

    assert outcome.deltas == answer("count")[:4]
    assert outcome.finish is not None and outcome.finish.reason == "length"
    assert model_calls(emulator)[0].json["max_tokens"] == 4


@pytest.mark.asyncio
async def test_it_passes_the_vision_licence_gate_automatically_exactly_once(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain, image: ImagePart
) -> None:
    client = make_client("cloudflare")
    request = ChatRequest(
        model=CF_VISION_MODEL, messages=(Message("user", "What is this?", (image,)),)
    )
    first = await run(client, request)
    second = await run(client, request)

    assert first.error is None and second.error is None
    assert first.text == second.text == "".join(answer("What is this?"))
    calls = model_calls(emulator)
    agree_calls = [c for c in calls if c.json == {"prompt": "agree"}]
    assert len(agree_calls) == 1
    assert [c.status for c in calls] == [403, 200, 200, 200]  # 5016, agree, retry, next request


@pytest.mark.asyncio
async def test_the_vision_model_gets_the_prompt_and_the_image_as_a_byte_array(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain, image: ImagePart
) -> None:
    emulator.set_cloudflare_licence(True)
    older = ImagePart(data=b"\x89PNG-older", mime_type="image/png")
    request = ChatRequest(
        model=CF_VISION_MODEL,
        system="You describe pictures.",
        messages=(
            Message("user", "Look at this", (older,)),
            Message("assistant", "A dog."),
            Message("user", "And now?", (image,)),
        ),
    )
    outcome = await run(make_client("cloudflare"), request)

    assert outcome.error is None
    (call,) = model_calls(emulator)
    assert call.json["image"] == list(PNG)  # only the latest image, one int per byte
    assert call.image_bytes == [len(PNG)]
    assert "messages" not in call.json
    assert call.json["prompt"] == (
        "You describe pictures.\n\nUser: Look at this\n\nAssistant: A dog.\n\nUser: And now?"
    )
    assert call.json["max_tokens"] == 1024


@pytest.mark.asyncio
async def test_the_vision_model_without_an_image_uses_the_messages_shape(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    emulator.set_cloudflare_licence(True)
    request = ChatRequest(model=CF_VISION_MODEL, messages=(Message("user", "Just text"),))
    outcome = await run(make_client("cloudflare"), request)

    assert outcome.error is None
    (call,) = model_calls(emulator)
    assert call.json["messages"] == [{"role": "user", "content": "Just text"}]
    assert "image" not in call.json


@pytest.mark.asyncio
async def test_a_refused_licence_acceptance_is_an_auth_error(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain, image: ImagePart
) -> None:
    emulator.script("cloudflare", Fault("ok"), times=1)  # the first call meets the gate (5016)
    emulator.script("cloudflare", Fault("auth-before"), times=1)  # the "agree" call fails
    request = ChatRequest(model=CF_VISION_MODEL, messages=(Message("user", "Hi", (image,)),))
    outcome = await run(make_client("cloudflare"), request)

    assert outcome.error is not None and outcome.error.kind is ErrorKind.AUTH
    assert "licence" in outcome.error.message
    assert emulator.calls("cloudflare") == 2


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("code", "kind", "calls"),
    [
        (3036, ErrorKind.QUOTA_EXHAUSTED, 1),
        (4006, ErrorKind.QUOTA_EXHAUSTED, 1),
        (3040, ErrorKind.RATE_LIMITED, 3),
    ],
)
async def test_it_tells_quota_from_capacity_by_code_although_both_are_429(
    code: int,
    kind: ErrorKind,
    calls: int,
    emulator: EmulatorServer,
    make_client: ClientFactory,
    run: Drain,
) -> None:
    emulator.script("cloudflare", Fault("429-before", code=code), times=None)
    request = ChatRequest(model=CF_TEXT_MODEL, messages=(Message("user", "Hi"),))
    outcome = await run(make_client("cloudflare"), request)

    assert outcome.error is not None
    assert (outcome.error.kind, outcome.error.status, outcome.error.vendor_code) == (
        kind,
        429,
        str(code),
    )
    assert emulator.calls("cloudflare") == calls


@pytest.mark.asyncio
async def test_a_wrong_token_is_an_auth_error_that_does_not_repeat_the_token(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    client = make_client(
        "cloudflare",
        credentials={
            "account_id": emulator.credentials.cloudflare_account_id,
            "api_token": "cf-wrong-token-9999",
        },
    )
    outcome = await run(client, ChatRequest(model=CF_TEXT_MODEL, messages=(Message("user", "x"),)))

    assert outcome.error is not None and outcome.error.kind is ErrorKind.AUTH
    assert outcome.error.vendor_code == "10000"
    assert "cf-wrong-token-9999" not in repr(outcome.error)
    assert emulator.calls("cloudflare") == 1


@pytest.mark.asyncio
async def test_the_uuid_in_a_vendor_message_becomes_the_request_id(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    message = "AiError:AiError:Request timeout(4e0d0d52-1c9c-4a7e-9f0a-2b8f0c1d2e3f)"
    emulator.script(
        "cloudflare", Fault("500-before", code=3046, status=408, message=message), times=None
    )
    request = ChatRequest(model=CF_TEXT_MODEL, messages=(Message("user", "x"),))
    outcome = await run(make_client("cloudflare"), request)

    assert outcome.error is not None and outcome.error.kind is ErrorKind.TIMEOUT
    assert outcome.error.request_id == "4e0d0d52-1c9c-4a7e-9f0a-2b8f0c1d2e3f"
