from __future__ import annotations

import asyncio

import pytest

from providers.base import ChatRequest, ErrorKind, ImagePart, Message, ProviderError
from providers.catalogue import QIANFAN_MODEL
from providers.emulators import EmulatorServer, Fault
from providers.emulators.answer import build_answer
from providers.emulators.faults import Plan
from providers.qianfan import (
    IMAGE_PLACEHOLDER,
    MAX_INPUT_CHARS,
    InMemoryTokenCache,
    shape_messages,
    token_cache_key,
    token_ttl,
)

from .conftest import PNG, ClientFactory, Drain


def calls(emulator: EmulatorServer, endpoint: str) -> list:  # type: ignore[type-arg]
    return [r for r in emulator.requests if r.vendor == "qianfan" and r.endpoint == endpoint]


def ask(text: str, **params: object) -> ChatRequest:
    return ChatRequest(model=QIANFAN_MODEL, messages=(Message("user", text),), params=params)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.asyncio
async def test_it_streams_increments_with_usage_finish_and_the_token_in_the_query(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    request = ChatRequest(
        model=QIANFAN_MODEL,
        system="Answer in English.",
        messages=(Message("user", "Hi"), Message("assistant", "Hello"), Message("user", "Why?")),
        params={"temperature": 0.7, "penalty_score": 1.2, "stop": ["###"]},
    )
    outcome = await run(make_client("qianfan"), request)

    tokens = list(build_answer("Why?", Plan()).tokens)
    assert outcome.deltas == tokens
    assert outcome.finish is not None and outcome.finish.reason == "stop"
    assert outcome.finish.usage is not None
    assert outcome.finish.usage.completion_tokens == len(tokens)
    assert outcome.finish.request_id and outcome.finish.request_id.startswith("as-")

    (token_call,) = calls(emulator, "token")
    creds = emulator.credentials
    assert token_call.query == {
        "grant_type": "client_credentials",
        "client_id": creds.qianfan_ak,
        "client_secret": creds.qianfan_sk,
    }
    (chat,) = calls(emulator, "model")
    assert chat.path.endswith("/wenxinworkshop/chat/llama_3_70b")
    assert chat.query["access_token"].startswith("24.")
    assert "authorization" not in chat.headers
    assert chat.json == {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Why?"},
        ],
        "stream": True,
        "temperature": 0.7,
        "penalty_score": 1.2,
        "stop": ["###"],
        "system": "Answer in English.",
    }


@pytest.mark.asyncio
async def test_it_reuses_the_cached_token_across_requests(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    client = make_client("qianfan")
    for text in ("one", "two", "three"):
        assert (await run(client, ask(text))).error is None

    assert len(calls(emulator, "token")) == 1
    assert len({c.query["access_token"] for c in calls(emulator, "model")}) == 1


@pytest.mark.asyncio
async def test_it_survives_a_token_expiring_mid_conversation_with_exactly_one_refresh(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    client = make_client("qianfan")
    first = await run(client, ask("first"))
    emulator.expire_qianfan_tokens()
    second = await run(client, ask("second"))

    assert first.error is None and second.error is None
    assert second.text == "".join(build_answer("second", Plan()).tokens)
    assert len(calls(emulator, "token")) == 2
    model = calls(emulator, "model")
    assert [c.status for c in model] == [200, 200, 200]  # 111 arrives as a 200 JSON body
    assert model[0].query["access_token"] == model[1].query["access_token"]
    assert model[2].query["access_token"] != model[1].query["access_token"]


@pytest.mark.asyncio
async def test_a_token_rejected_twice_is_an_auth_error_after_one_refresh(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    emulator.script("qianfan", Fault("auth-before"), times=2)
    outcome = await run(make_client("qianfan"), ask("hi"))

    assert outcome.error is not None and outcome.error.kind is ErrorKind.AUTH
    assert outcome.error.vendor_code == "110"
    assert len(calls(emulator, "token")) == 2
    assert emulator.calls("qianfan") == 2


@pytest.mark.asyncio
async def test_it_renews_the_token_before_it_expires(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    clock = Clock()
    client = make_client("qianfan", token_cache=InMemoryTokenCache(clock=clock))
    await run(client, ask("one"))
    clock.now += 2_592_000 - 86_400 - 1  # just under 29 days: the token is still fresh
    await run(client, ask("two"))
    assert len(calls(emulator, "token")) == 1

    clock.now += 2  # less than a day of the 30 left: renew before using it
    outcome = await run(client, ask("three"))
    assert outcome.error is None
    assert len(calls(emulator, "token")) == 2
    assert all(c.status == 200 for c in calls(emulator, "model"))
    assert emulator.calls("qianfan") == 3  # no request was spent on a 110/111


@pytest.mark.asyncio
async def test_clients_sharing_a_cache_share_one_token(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    cache = InMemoryTokenCache()
    await run(make_client("qianfan", token_cache=cache), ask("a"))
    await run(make_client("qianfan", token_cache=cache), ask("b"))

    assert len(calls(emulator, "token")) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("field", ["api_key", "secret_key"])
async def test_wrong_credentials_are_an_auth_error_without_the_secret(
    field: str, emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    known = emulator.credentials
    creds = {"api_key": known.qianfan_ak, "secret_key": known.qianfan_sk}
    creds[field] = "wrong-value-778899"
    outcome = await run(make_client("qianfan", credentials=creds), ask("hi"))

    assert outcome.error is not None and outcome.error.kind is ErrorKind.AUTH
    assert outcome.error.vendor_code == "invalid_client"
    assert "wrong-value-778899" not in repr(outcome.error)
    assert emulator.calls("qianfan") == 0


@pytest.mark.asyncio
async def test_temperature_zero_is_sent_as_the_smallest_allowed_value(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    outcome = await run(make_client("qianfan"), ask("hi", temperature=0))

    assert outcome.error is None
    assert calls(emulator, "model")[0].json["temperature"] == 0.01


@pytest.mark.asyncio
async def test_images_are_dropped_and_the_conversation_still_fits_the_rules(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    picture = ImagePart(data=PNG, mime_type="image/png", url="http://127.0.0.1:9/x.png")
    request = ChatRequest(
        model=QIANFAN_MODEL,
        messages=(
            Message("assistant", "Welcome!"),
            Message("user", "", (picture,)),
            Message("user", "What do you think?", (picture,)),
            Message("assistant", ""),
            Message("user", "Well?"),
        ),
    )
    outcome = await run(make_client("qianfan"), request)

    assert outcome.error is None
    assert calls(emulator, "model")[0].json["messages"] == [
        {"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n\nWhat do you think?\n\nWell?"}
    ]


def test_shaping_keeps_roles_alternating_with_an_odd_count_and_system_apart() -> None:
    request = ChatRequest(
        model=QIANFAN_MODEL,
        system="Be kind.",
        messages=(
            Message("user", "a"),
            Message("user", "b"),
            Message("system", "Extra rule."),
            Message("assistant", "c"),
            Message("assistant", "d"),
            Message("user", "e"),
        ),
    )
    system, messages, _rounds = shape_messages(request)

    assert system == "Be kind.\n\nExtra rule."
    assert messages == [
        {"role": "user", "content": "a\n\nb"},
        {"role": "assistant", "content": "c\n\nd"},
        {"role": "user", "content": "e"},
    ]


def test_shaping_drops_the_oldest_turns_to_fit_the_character_budget() -> None:
    old, reply, new = "o" * 3000, "r" * 1000, "n" * 1000
    request = ChatRequest(
        model=QIANFAN_MODEL,
        system="s" * 100,
        messages=(Message("user", old), Message("assistant", reply), Message("user", new)),
    )
    system, messages, _rounds = shape_messages(request)

    assert messages == [{"role": "user", "content": new}]
    assert len(system) + sum(len(m["content"]) for m in messages) <= MAX_INPUT_CHARS
    assert len(messages) % 2 == 1


def test_shaping_refuses_a_last_message_longer_than_the_budget() -> None:
    request = ask("x" * (MAX_INPUT_CHARS + 1))
    with pytest.raises(ProviderError) as caught:
        shape_messages(request)
    assert caught.value.kind is ErrorKind.BAD_REQUEST
    assert "4800" in caught.value.message


def test_shaping_refuses_an_image_only_last_message() -> None:
    picture = ImagePart(data=PNG, mime_type="image/png")
    request = ChatRequest(model=QIANFAN_MODEL, messages=(Message("user", " ", (picture,)),))
    with pytest.raises(ProviderError) as caught:
        shape_messages(request)
    assert "text only" in caught.value.message


def test_the_cache_key_hides_the_credentials() -> None:
    key = token_cache_key("http://h", "my-api-key-1", "my-secret-key-2")
    assert "my-api-key-1" not in key and "my-secret-key-2" not in key
    assert key != token_cache_key("http://h", "my-api-key-1", "other-secret")


def test_tokens_are_kept_until_ten_percent_or_one_day_of_their_life_is_left() -> None:
    assert token_ttl(2_592_000) == 2_592_000 - 86_400
    assert token_ttl(3_600) == 3_240


@pytest.mark.asyncio
async def test_the_in_memory_cache_forgets_expired_entries() -> None:
    clock = Clock()
    cache = InMemoryTokenCache(clock=clock)
    await cache.set("k", "v", 10)
    assert await cache.get("k") == "v"
    clock.now += 10
    assert await cache.get("k") is None
    assert "v" not in repr(cache)


@pytest.mark.asyncio
async def test_a_token_error_inside_the_event_stream_refreshes_once_before_the_first_token(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    emulator.script("qianfan", Fault("error-after", n=0, code=111), times=1)
    outcome = await run(make_client("qianfan"), ask("hi"))

    assert outcome.error is None
    assert outcome.text == "".join(build_answer("hi", Plan()).tokens)
    assert len(calls(emulator, "token")) == 2
    assert emulator.calls("qianfan") == 2


@pytest.mark.asyncio
async def test_max_tokens_is_enforced_while_reading_and_never_sent(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    from providers.tokens import estimate_tokens

    outcome = await run(make_client("qianfan"), ask("A long one [[emu:tokens n=300 rate=200]]",
                                                    max_tokens=20))
    assert outcome.error is None and outcome.finish is not None
    assert outcome.finish.reason == "length"
    assert 0 < estimate_tokens(outcome.text) <= 20
    (call,) = calls(emulator, "model")
    assert "max_tokens" not in call.json and "max_output_tokens" not in call.json
    for _ in range(100):  # the emulator records how a stream ended once it notices
        if calls(emulator, "model")[0].outcome != "pending":
            break
        await asyncio.sleep(0.02)
    assert calls(emulator, "model")[0].outcome == "client-closed"  # closed at the cap


@pytest.mark.asyncio
@pytest.mark.parametrize("code", [336104, 336105, 336101, 336003])
async def test_client_errors_are_bad_requests_and_are_not_retried(
    code: int, emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    emulator.script("qianfan", Fault("500-before", code=code), times=None)
    outcome = await run(make_client("qianfan"), ask("Hi"))
    assert outcome.error is not None and outcome.error.kind is ErrorKind.BAD_REQUEST
    assert len(calls(emulator, "model")) == 1


@pytest.mark.asyncio
async def test_an_earlier_flagged_round_names_the_turns_to_leave_out(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    request = ChatRequest(model=QIANFAN_MODEL, messages=(
        Message("user", "first"), Message("assistant", "answer"),
        Message("user", "second [[emu:content-filter-after n=0 ban_round=0]]")))
    outcome = await run(make_client("qianfan"), request)
    assert outcome.error is not None and outcome.error.kind is ErrorKind.CONTENT_FILTERED
    assert outcome.error.details["flagged_messages"] == [0, 1]
    assert outcome.error.hint and "earlier message" in outcome.error.hint


@pytest.mark.asyncio
async def test_the_current_turn_flagged_is_a_plain_content_filter(
    emulator: EmulatorServer, make_client: ClientFactory, run: Drain
) -> None:
    outcome = await run(make_client("qianfan"),
                        ask("Hi [[emu:content-filter-after n=0 ban_round=-1]]"))
    assert outcome.error is not None and outcome.error.kind is ErrorKind.CONTENT_FILTERED
    assert outcome.error.details["flagged_messages"] == [] and outcome.error.hint is None
