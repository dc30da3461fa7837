"""Offsets on the wire count UTF-16 code units, as JavaScript strings do (docs/protocol.md)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from conversations.events import u16_len


def units_by_walking(text: str) -> int:
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def test_characters_beyond_the_bmp_count_twice() -> None:
    assert u16_len("") == 0
    assert u16_len("lorem ipsum") == 11
    assert u16_len("été 世界") == 6
    assert u16_len("a🦙b") == 4
    assert u16_len("\ud800") == 1  # a lone surrogate is one unit


@given(st.text())
def test_the_count_equals_a_walk_over_the_characters(text: str) -> None:
    assert u16_len(text) == units_by_walking(text)
