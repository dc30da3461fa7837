"""Every emulator fault, for every vendor, ends in the right error kind or in success, and the
text yielded before an error is exactly what the emulator sent."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from providers.base import ChatRequest, ErrorKind, ImagePart, Message
from providers.catalogue import CF_TEXT_MODEL, DASHSCOPE_MODEL, QIANFAN_MODEL
from providers.emulators import EmulatorServer, Fault
from providers.emulators.answer import build_answer
from providers.emulators.faults import Plan

from .conftest import ClientFactory, Drain

PROMPT = "Tell me about llamas, please"
VENDORS = ("cloudflare", "dashscope", "qianfan")


def request_for(kind: str, image: ImagePart) -> ChatRequest:
    if kind == "cloudflare":
        return ChatRequest(model=CF_TEXT_MODEL, messages=(Message("user", PROMPT),))
    if kind == "dashscope":
        return ChatRequest(model=DASHSCOPE_MODEL, messages=(Message("user", PROMPT, (image,)),))
    return ChatRequest(model=QIANFAN_MODEL, messages=(Message("user", PROMPT),))


def tokens(*faults: Fault) -> list[str]:
    """The tokens the emulator sends for PROMPT under these faults."""
    return list(build_answer(PROMPT, Plan.from_faults(faults)).tokens)


@dataclass(frozen=True)
class Case:
    fault: Fault
    kind: ErrorKind | None  # None: success
    sent: int | None  # tokens yielded before the error (None: all of them)
    calls: int  # model calls the emulator received


# Vendor-neutral expectations (scripted for one call: a retry meets a healthy emulator).
COMMON: list[Case] = [
    Case(Fault("ok"), None, None, 1),
    Case(Fault("429-before"), None, None, 2),
    Case(Fault("500-before"), None, None, 2),
    Case(Fault("quota-before"), ErrorKind.QUOTA_EXHAUSTED, 0, 1),
    Case(Fault("drop-after", n=3), ErrorKind.TRUNCATED, 3, 1),
    Case(Fault("drop-after", n=3, rst=1), ErrorKind.TRUNCATED, 3, 1),
    Case(Fault("drop-after", n=0), None, None, 2),
    Case(Fault("no-terminator"), ErrorKind.TRUNCATED, None, 1),
    Case(Fault("content-filter-after", n=3), ErrorKind.CONTENT_FILTERED, 3, 1),
    Case(Fault("huge-event", mb=2), ErrorKind.BAD_REQUEST, -1, 1),
    Case(Fault("utf8-split"), None, None, 1),
    Case(Fault("byte-by-byte"), None, None, 1),
    Case(Fault("crlf"), None, None, 1),
    Case(Fault("cr"), None, None, 1),
    Case(Fault("comments"), None, None, 1),
    Case(Fault("multi-event-chunk", k=4), None, None, 1),
    Case(Fault("unknown-fields"), None, None, 1),
    Case(Fault("no-space"), None, None, 1),
    Case(Fault("close-delimited"), None, None, 1),
    Case(Fault("html"), None, None, 1),
    Case(Fault("slow", rate=400), None, None, 1),
]

# Where the vendors legitimately differ.
SPECIFIC: dict[str, list[Case]] = {
    "cloudflare": [
        Case(Fault("auth-before"), ErrorKind.AUTH, 0, 1),
        # The emulator's in-band error defaults to 3040 (capacity): rate limited, not retried
        # because text was already shown.
        Case(Fault("error-after", n=3), ErrorKind.RATE_LIMITED, 3, 1),
        Case(Fault("error-after", n=0), None, None, 2),
        Case(Fault("quota-before", code=3036), ErrorKind.QUOTA_EXHAUSTED, 0, 1),
    ],
    "dashscope": [
        Case(Fault("auth-before"), ErrorKind.AUTH, 0, 1),
        Case(Fault("error-after", n=3), ErrorKind.UNAVAILABLE, 3, 1),
        Case(Fault("error-after", n=0), None, None, 2),
        Case(Fault("dashscope-error-sse-as-json"), ErrorKind.BAD_REQUEST, 0, 1),
        Case(
            Fault("dashscope-error-sse-as-json", code="Throttling.RateQuota"), None, None, 2
        ),
        Case(Fault("dashscope-200-error"), ErrorKind.BAD_REQUEST, 0, 1),
        Case(Fault("dashscope-200-error", code="Throttling.RateQuota"), None, None, 2),
        Case(
            Fault("dashscope-200-error", code="DataInspectionFailed"),
            ErrorKind.CONTENT_FILTERED,
            0,
            1,
        ),
        Case(
            Fault("429-before", code="Throttling.AllocationQuota", message="Allocated quota"),
            None,
            None,
            2,
        ),
        Case(Fault("quota-before"), ErrorKind.QUOTA_EXHAUSTED, 0, 1),  # "Free allocated quota"
        Case(Fault("quota-before", code="Arrearage"), ErrorKind.QUOTA_EXHAUSTED, 0, 1),
    ],
    "qianfan": [
        # 110 before the first token: one token refresh, one retry, success.
        Case(Fault("auth-before"), None, None, 2),
        Case(Fault("error-after", n=3), ErrorKind.UNAVAILABLE, 3, 1),
        Case(Fault("error-after", n=0), None, None, 2),
        Case(Fault("429-before", code=336501), None, None, 2),
        # 110/111 inside an event-stream body before the first token: refresh, retry once.
        Case(Fault("error-after", n=0, code=110), None, None, 2),
        Case(Fault("error-after", n=0, code=111), None, None, 2),
        # ... but after text it cannot be retried without repeating what the user saw.
        Case(Fault("error-after", n=2, code=111), ErrorKind.UNAVAILABLE, 2, 1),
        Case(Fault("quota-before", code=19), ErrorKind.QUOTA_EXHAUSTED, 0, 1),
    ],
}

MATRIX = [(kind, case) for kind in VENDORS for case in [*COMMON, *SPECIFIC[kind]]]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kind", "case"), MATRIX, ids=[f"{k}-{c.fault.spec()}" for k, c in MATRIX]
)
async def test_each_fault_ends_in_the_right_kind_with_the_text_the_emulator_sent(
    kind: str,
    case: Case,
    emulator: EmulatorServer,
    make_client: ClientFactory,
    run: Drain,
    image: ImagePart,
) -> None:
    emulator.script(kind, case.fault, times=1)
    outcome = await run(make_client(kind), request_for(kind, image))

    sent = tokens(case.fault)
    assert emulator.calls(kind) == case.calls
    if case.kind is None:
        assert outcome.error is None, repr(outcome.error)
        assert outcome.finishes == 1
        assert outcome.deltas == sent
        return
    assert outcome.error is not None and outcome.error.kind is case.kind, repr(outcome.error)
    assert outcome.finish is None
    expected = sent if case.sent is None else sent[: case.sent]
    assert outcome.text == "".join(expected)
    assert outcome.error.message


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", VENDORS)
async def test_a_stall_times_out_and_closes_the_upstream_connection(
    kind: str,
    emulator: EmulatorServer,
    make_client: ClientFactory,
    run: Drain,
    image: ImagePart,
) -> None:
    emulator.script(kind, Fault("stall-after", n=2, seconds=5), times=1)
    outcome = await run(make_client(kind, read_timeout=0.5), request_for(kind, image))

    assert outcome.error is not None and outcome.error.kind is ErrorKind.TIMEOUT
    assert outcome.text == "".join(tokens()[:2])
    assert emulator.calls(kind) == 1  # text was shown: no retry
    assert await outcome_of_last_call(emulator, kind) == "client-closed"


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", VENDORS)
async def test_a_stall_before_the_first_token_is_retried(
    kind: str,
    emulator: EmulatorServer,
    make_client: ClientFactory,
    run: Drain,
    image: ImagePart,
) -> None:
    emulator.script(kind, Fault("stall-after", n=0, seconds=5), times=1)
    outcome = await run(make_client(kind, read_timeout=0.5), request_for(kind, image))

    assert outcome.error is None
    assert outcome.text == "".join(tokens())
    assert emulator.calls(kind) == 2


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", VENDORS)
async def test_retryable_errors_give_up_after_three_attempts(
    kind: str,
    emulator: EmulatorServer,
    make_client: ClientFactory,
    run: Drain,
    image: ImagePart,
) -> None:
    emulator.script(kind, Fault("500-before"), times=None)
    outcome = await run(make_client(kind), request_for(kind, image))

    assert outcome.error is not None and outcome.error.kind is ErrorKind.UNAVAILABLE
    assert outcome.text == ""
    assert emulator.calls(kind) == 3


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", VENDORS)
async def test_a_retry_after_beyond_the_cap_is_not_waited_for(
    kind: str,
    emulator: EmulatorServer,
    make_client: ClientFactory,
    run: Drain,
    image: ImagePart,
) -> None:
    emulator.script(kind, Fault("429-before", retry_after=120), times=None)
    outcome = await run(make_client(kind), request_for(kind, image))

    assert outcome.error is not None and outcome.error.kind is ErrorKind.RATE_LIMITED
    assert outcome.error.retry_after == 120
    assert emulator.calls(kind) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", VENDORS)
async def test_cancelling_the_consumer_closes_the_upstream_response(
    kind: str,
    emulator: EmulatorServer,
    make_client: ClientFactory,
    image: ImagePart,
) -> None:
    emulator.script(kind, Fault("slow", n=200, rate=20), times=1)
    client = make_client(kind)
    first_delta = asyncio.Event()

    async def consume() -> None:
        async for _item in client.stream(request_for(kind, image)):
            first_delta.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_delta.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await outcome_of_last_call(emulator, kind) == "client-closed"


async def outcome_of_last_call(emulator: EmulatorServer, kind: str) -> str:
    """The emulator's verdict on the last model call, once it has one (polled, not timed)."""
    outcome = "pending"
    for _ in range(300):
        calls = [r for r in emulator.requests if r.vendor == kind and r.endpoint == "model"]
        outcome = calls[-1].outcome
        if outcome != "pending":
            break
        await asyncio.sleep(0.01)
    return outcome


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", VENDORS)
async def test_errors_carry_the_vendor_code_and_request_id(
    kind: str,
    emulator: EmulatorServer,
    make_client: ClientFactory,
    run: Drain,
    image: ImagePart,
) -> None:
    emulator.script(kind, Fault("error-after", n=2), times=1)
    outcome = await run(make_client(kind), request_for(kind, image))

    error = outcome.error
    assert error is not None
    assert error.vendor_code == {"cloudflare": "3040", "dashscope": "InternalError",
                                 "qianfan": "336000"}[kind]
    assert error.request_id
