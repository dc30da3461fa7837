"""The websocket compressor of a quiet socket is freed, and the stream a client inflates stays
whole across it (chatsite/daphne_tuning.py). The client side here is zlib's raw inflater kept
for the whole connection, as RFC 7692 has a client do (and websockets and browsers do)."""

from __future__ import annotations

import asyncio
import json
import zlib

import pytest

from chatsite import daphne_tuning
from chatsite.daphne_tuning import IdleReleasingDeflate

TAIL = b"\x00\x00\xff\xff"  # what the sender strips from each message and the receiver adds


def _server_side() -> IdleReleasingDeflate:
    return IdleReleasingDeflate(True, False, False, daphne_tuning.DEFLATE_WINDOW_BITS, 0,
                                daphne_tuning.DEFLATE_MEM_LEVEL)


def _send(pmce: IdleReleasingDeflate, text: str) -> bytes:
    pmce.start_compress_message()
    data = pmce.compress_message_data(text.encode())
    return bytes(data + pmce.end_compress_message())


def _frames(n: int) -> list[str]:
    return [json.dumps(["d", 3, i * 40, f" lorem ipsum dolor sit amet {i}, consectetur"],
                       separators=(",", ":")) for i in range(n)]


def test_a_quiet_socket_gives_its_compressor_back_and_the_client_inflates_on_unharmed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daphne_tuning, "DEFLATE_IDLE_SECONDS", 0.05)

    async def scenario() -> tuple[list[bytes], list[bool]]:
        pmce = _server_side()
        sent, held = [], []
        for text in _frames(5):  # an answer streaming: the compressor is kept
            sent.append(_send(pmce, text))
            held.append(pmce._compressor is not None)
        await asyncio.sleep(0.2)  # quiet: the timer frees it
        held.append(pmce._compressor is not None)
        for text in _frames(5):  # the next answer: a fresh compressor
            sent.append(_send(pmce, text))
        held.append(pmce._compressor is not None)
        return sent, held

    sent, held = asyncio.run(scenario())
    assert held == [True] * 5 + [False, True]
    client = zlib.decompressobj(-15)
    received = [client.decompress(message + TAIL).decode() for message in sent]
    assert received == _frames(5) + _frames(5)
    # While the context is kept, alike frames shrink: the later ones cost less than the first.
    assert len(sent[4]) < len(sent[0])


def test_a_socket_in_use_keeps_its_compressor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daphne_tuning, "DEFLATE_IDLE_SECONDS", 0.2)

    async def scenario() -> bool:
        pmce = _server_side()
        for text in _frames(12):  # a frame every 50 ms for 0.6 s: never quiet for 0.2 s
            _send(pmce, text)
            await asyncio.sleep(0.05)
        return pmce._compressor is not None

    assert asyncio.run(scenario())
