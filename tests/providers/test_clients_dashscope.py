from __future__ import annotations

import base64
from dataclasses import replace

import pytest

from providers.base import ChatRequest, ErrorKind, ImagePart, Message
from providers.catalogue import DASHSCOPE_MODEL
from providers.dashscope import IMAGE_REQUIRED, CumulativeText
from providers.emulators import EmulatorServer, Fault
from providers.emulators.answer import build_answer
from providers.emulators.faults import Plan
from providers.registry import get_client

from .conftest import PNG, ClientFactory, Drain, configs_for, drain


def model_calls(emulator: EmulatorServer) -> list:  # type: ignore[type-arg]
    return [r for r in emulator.requests if r.vendor == "dashscope" and r.endpoint == "model"]


@pytest.mark.asyncio
async def test_it_turns_cumulative_text_into_deltas_with_usage_and_finish(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain, image: ImagePart
) -> None:
    request = ChatRequest(
        model=DASHSCOPE_MODEL,
        system="Describe images.",
        messages=(
            Message("user", "What is it?", (image,)),
            Message("assistant", "A cat."),
            Message("user", "What colour?"),
        ),
        params={"max_tokens": 300, "temperature": 0.5, "top_p": 0.9, "top_k": 4},
    )
    outcome = await run(make_client("dashscope"), request)

    tokens = list(build_answer("What colour?", Plan()).tokens)
    assert outcome.deltas == tokens  # one event per token, each carrying the whole text so far
    assert outcome.finish is not None and outcome.finish.reason == "stop"
    assert outcome.finish.usage is not None
    assert outcome.finish.usage.completion_tokens == len(tokens)
    assert outcome.finish.usage.prompt_tokens
    (call,) = model_calls(emulator)
    assert outcome.finish.request_id and len(outcome.finish.request_id) == 36  # the uuid
    assert call.headers["x-dashscope-sse"] == "enable"
    assert call.headers["authorization"] == f"Bearer {emulator.credentials.dashscope_api_key}"
    assert call.json == {
        "model": DASHSCOPE_MODEL,
        "input": {
            "messages": [
                {"role": "system", "content": [{"text": "Describe images."}]},
                {"role": "user", "content": [{"image": image.url}, {"text": "What is it?"}]},
                {"role": "assistant", "content": [{"text": "A cat."}]},
                {"role": "user", "content": [{"text": "What colour?"}]},
            ]
        },
        "parameters": {"max_new_tokens": 300, "temperature": 0.5, "top_p": 0.9, "top_k": 4},
    }
    assert call.image_bytes == [len(PNG)]  # the emulator fetched the one signed URL


@pytest.mark.asyncio
async def test_it_never_sends_incremental_output(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain, image: ImagePart
) -> None:
    request = ChatRequest(model=DASHSCOPE_MODEL, messages=(Message("user", "Hi", (image,)),))
    await run(make_client("dashscope"), request)

    (call,) = model_calls(emulator)
    assert "incremental_output" not in call.json.get("parameters", {})
    assert "incremental_output" not in call.json


@pytest.mark.asyncio
async def test_it_reports_length_when_max_new_tokens_is_hit(
    make_client: ClientFactory, run: Drain, image: ImagePart
) -> None:
    request = ChatRequest(
        model=DASHSCOPE_MODEL,
        messages=(Message("user", "Hi", (image,)),),
        params={"max_tokens": 3},
    )
    outcome = await run(make_client("dashscope"), request)

    assert outcome.deltas == list(build_answer("Hi", Plan()).tokens)[:3]
    assert outcome.finish is not None and outcome.finish.reason == "length"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "messages",
    [
        (Message("user", "No picture"),),
        (Message("user", "First", ()), Message("assistant", "ok"), Message("user", "x")),
    ],
)
async def test_a_user_turn_without_an_image_is_refused_before_any_call(
    messages: tuple[Message, ...],
    emulator: EmulatorServer,
    make_client: ClientFactory,
    run: Drain,
) -> None:
    outcome = await run(make_client("dashscope"), ChatRequest(DASHSCOPE_MODEL, messages))

    assert outcome.error is not None and outcome.error.kind is ErrorKind.BAD_REQUEST
    assert outcome.error.message == IMAGE_REQUIRED
    assert "needs an image in the conversation" in outcome.error.message
    assert emulator.calls("dashscope") == 0
    assert emulator.requests == []


@pytest.mark.asyncio
async def test_text_only_turns_beside_the_one_image_are_sent_as_the_vendor_shows(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain, image: ImagePart
) -> None:
    # Seed 002's own multi-turn example: the image in the first user turn, text after it.
    messages = (
        Message("user", "What is in this picture?", (image,)),
        Message("assistant", "A llama."),
        Message("user", "Write a poem about the scene."),
    )
    outcome = await run(make_client("dashscope"), ChatRequest(DASHSCOPE_MODEL, messages))

    assert outcome.error is None and outcome.text
    sent = emulator.requests[-1].json["input"]["messages"]
    assert [len([p for p in m["content"] if "image" in p]) for m in sent] == [1, 0, 0]


@pytest.mark.asyncio
async def test_two_images_in_one_request_are_refused_before_any_call(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain, image: ImagePart
) -> None:
    messages = (Message("user", "One", (image,)), Message("assistant", "ok"),
                Message("user", "Two", (image,)))
    outcome = await run(make_client("dashscope"), ChatRequest(DASHSCOPE_MODEL, messages))

    assert outcome.error is not None and outcome.error.vendor_code == "too_many_images"
    assert emulator.requests == []
    assert emulator.calls("dashscope") == 0


@pytest.mark.asyncio
async def test_the_data_uri_transport_sends_the_bytes_inline() -> None:
    server = EmulatorServer(dashscope_accept_data_uri=True)
    server.start()
    try:
        config = configs_for(server)["dashscope"]
        options = {**config.options, "image_transport": "data_uri"}
        client = get_client(replace(config, options=options))
        inline = ImagePart(data=PNG, mime_type="image/png", url=None)
        request = ChatRequest(DASHSCOPE_MODEL, (Message("user", "Hi", (inline,)),))
        outcome = await drain(client, request)
        await client.aclose()
    finally:
        server.stop()

    assert outcome.error is None
    (call,) = [r for r in server.requests if r.endpoint == "model"]
    sent = call.json["input"]["messages"][0]["content"][0]["image"]
    assert sent == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert call.image_bytes == [len(PNG)]


@pytest.mark.asyncio
async def test_an_image_without_a_url_is_refused_in_url_mode(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    inline = ImagePart(data=PNG, mime_type="image/png", url=None)
    outcome = await run(
        make_client("dashscope"), ChatRequest(DASHSCOPE_MODEL, (Message("user", "x", (inline,)),))
    )

    assert outcome.error is not None and outcome.error.kind is ErrorKind.BAD_REQUEST
    assert emulator.calls("dashscope") == 0


@pytest.mark.asyncio
async def test_an_unreachable_image_url_is_the_vendors_bad_request(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    broken = ImagePart(data=PNG, mime_type="image/png", url="http://example.invalid/cat.png")
    outcome = await run(
        make_client("dashscope"), ChatRequest(DASHSCOPE_MODEL, (Message("user", "x", (broken,)),))
    )

    assert outcome.error is not None and outcome.error.kind is ErrorKind.BAD_REQUEST
    assert outcome.error.vendor_code == "InvalidParameter"
    assert outcome.error.request_id
    assert outcome.error.status == 400


@pytest.mark.asyncio
async def test_a_wrong_key_is_an_auth_error(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain, image: ImagePart
) -> None:
    client = make_client("dashscope", credentials={"api_key": "sk-wrong-key-123456"})
    outcome = await run(client, ChatRequest(DASHSCOPE_MODEL, (Message("user", "x", (image,)),)))

    assert outcome.error is not None and outcome.error.kind is ErrorKind.AUTH
    assert outcome.error.vendor_code == "InvalidApiKey"
    assert "sk-wrong-key-123456" not in repr(outcome.error)


def _apply(events: list[str]) -> tuple[str, list[tuple[str, int]]]:
    text, steps, reader = "", [], CumulativeText()
    for event in events:
        delta, rewind = reader.feed(event)
        steps.append((delta, rewind))
        text = text[: len(text) - rewind] + delta
    return text, steps


def test_cumulative_text_becomes_deltas_by_prefix() -> None:
    text, steps = _apply(["Hel", "Hello", "Hello, wo", "Hello, world"])
    assert text == "Hello, world"
    assert steps == [("Hel", 0), ("lo", 0), (", wo", 0), ("rld", 0)]


def test_a_cumulative_event_that_rewrites_the_tail_continues_from_the_common_prefix() -> None:
    # The audit's probe: a replacement character that later became a whole one.
    text, steps = _apply(["这是", "这是一\ufffd", "这是一张照片"])
    assert text == "这是一张照片"  # the vendor's final text, nothing appended twice
    assert steps[-1] == ("张照片", 1)


def test_a_server_that_sends_increments_after_all_is_appended() -> None:
    text, steps = _apply(["Hel", "lo", ", world"])
    assert text == "Hello, world"
    assert all(rewind == 0 for _delta, rewind in steps)


@pytest.mark.asyncio
@pytest.mark.parametrize(("code", "status", "kind", "words"), [
    # The image could not be downloaded: not moderation; the admin must fix SITE_URL.
    ("InvalidParameter.DataInspection", 400, ErrorKind.BAD_REQUEST, "SITE_URL"),
    ("DataInspectionFailed", 400, ErrorKind.CONTENT_FILTERED, None),
    # This model is free-trial only: its normal end state is a quota that never returns.
    ("AllocationQuota.FreeTierOnly", 403, ErrorKind.QUOTA_EXHAUSTED, "free trial"),
    ("AllocationQuota.FreeTierOnly", 400, ErrorKind.QUOTA_EXHAUSTED, "free trial"),
])
async def test_errors_are_read_as_the_vendor_sends_them(
    code: str, status: int, kind: ErrorKind, words: str | None, emulator: EmulatorServer,
    make_client: ClientFactory, run: Drain, image: ImagePart
) -> None:
    emulator.script("dashscope", Fault("500-before", code=code, status=status), times=None)
    request = ChatRequest(DASHSCOPE_MODEL, (Message("user", "What is it?", (image,)),))
    outcome = await run(make_client("dashscope"), request)
    assert outcome.error is not None and outcome.error.kind is kind
    if words:
        assert outcome.error.hint and words in outcome.error.hint
    assert len([r for r in emulator.requests if r.endpoint == "model"]) == 1  # not retried
