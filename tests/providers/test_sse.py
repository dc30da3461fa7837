from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.base import ErrorKind, ProviderError
from providers.sse import SSEDecoder, SSEEvent, decode_all


def feed_in_pieces(body: bytes, cuts: list[int], **options: bool) -> list[SSEEvent]:
    decoder = SSEDecoder(**options)  # type: ignore[arg-type]
    events: list[SSEEvent] = []
    start = 0
    for cut in sorted(set(cuts)):
        events += decoder.feed(body[start:cut])
        start = cut
    events += decoder.feed(body[start:])
    return events + decoder.close()


def test_it_reads_data_with_and_without_a_space_after_the_colon() -> None:
    events = decode_all(b"data: one\n\ndata:two\n\ndata:  three\n\n")
    assert [e.data for e in events] == ["one", "two", " three"]


def test_it_joins_consecutive_data_lines_with_lf() -> None:
    (event,) = decode_all(b"data: a\ndata: b\ndata:\n\n")
    assert event.data == "a\nb\n"


def test_it_reads_event_id_and_retry_fields() -> None:
    (event,) = decode_all(b"id:7\nevent:result\nretry:1500\ndata:{}\n\n")
    assert (event.id, event.event, event.retry, event.data) == ("7", "result", 1500, "{}")


def test_it_uses_message_as_the_default_event_type() -> None:
    (event,) = decode_all(b"data: x\n\n")
    assert event.event == "message"
    assert event.complete


def test_it_returns_several_events_from_one_chunk() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"data: 1\n\ndata: 2\n\ndata: 3\n\n")
    assert [e.data for e in events] == ["1", "2", "3"]


def test_it_joins_an_event_split_in_the_middle_of_a_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"respo') == []
    assert decoder.feed(b'nse":"Hi"}') == []
    (event,) = decoder.feed(b"\n\n")
    assert event.data == '{"response":"Hi"}'


def test_it_treats_a_cr_at_chunk_end_and_lf_in_the_next_chunk_as_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []
    (event,) = decoder.feed(b"\n\r")
    assert event.data == "a\nb"
    assert decoder.feed(b"\n") == []
    assert decoder.close() == []


def test_it_accepts_bare_cr_line_endings() -> None:
    assert [e.data for e in decode_all(b"data: a\r\rdata: b\r\r")] == ["a", "b"]


def test_it_keeps_multibyte_utf8_split_across_chunks() -> None:
    body = "data: 你好, wörld 👋🏽\n\n".encode()
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for i in range(len(body)):
        events += decoder.feed(body[i : i + 1])
    assert [e.data for e in events] == ["你好, wörld 👋🏽"]


def test_it_drops_comment_lines_by_default() -> None:
    events = decode_all(b": keep-alive\n\n:HTTP_STATUS/200\ndata: x\n\n: bye\n")
    assert events == [SSEEvent(data="x")]


def test_it_exposes_comments_when_asked_so_dashscope_can_read_the_status() -> None:
    body = b'id:1\nevent:result\n:HTTP_STATUS/200\ndata:{"a":1}\n\n'
    (event,) = decode_all(body, keep_comments=True)
    assert event.comments == ("HTTP_STATUS/200",)
    assert (event.id, event.event, event.data) == ("1", "result", '{"a":1}')


def test_it_keeps_lines_with_unknown_fields_only_when_asked() -> None:
    body = b'{"error_code":110,"error_msg":"Access token invalid"}\n\n'
    assert decode_all(body) == []
    (event,) = decode_all(body, keep_other_lines=True)
    assert event.other_lines == ('{"error_code":110,"error_msg":"Access token invalid"}',)
    assert event.data == ""


def test_it_reports_a_partial_trailing_event_at_eof() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"response":"He') == []
    (event,) = decoder.close()
    assert event == SSEEvent(data='{"response":"He', complete=False)


def test_it_reports_a_terminated_line_without_blank_line_as_partial() -> None:
    assert decode_all(b"data: [DONE]\n") == [SSEEvent(data="[DONE]", complete=False)]


def test_it_strips_a_leading_byte_order_mark_split_across_chunks() -> None:
    body = "\ufeffdata: x\n\n".encode()
    assert feed_in_pieces(body, [1, 2]) == [SSEEvent(data="x")]


def test_it_replaces_invalid_bytes_instead_of_raising() -> None:
    (event,) = decode_all(b"data: a\xff\xfeb\xe4\xbd\n\n")
    assert event.data == "a\ufffd\ufffdb\ufffd"


def test_it_refuses_an_oversized_event_before_buffering_it() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    decoder.feed(b"data: " + b"x" * 60 + b"\n")
    with pytest.raises(ProviderError) as caught:
        decoder.feed(b"data: " + b"y" * 50)
    assert caught.value.kind is ErrorKind.BAD_REQUEST
    assert caught.value.vendor_code == "sse_event_too_large"


def test_it_refuses_a_single_huge_chunk_without_a_line_end() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    with pytest.raises(ProviderError):
        decoder.feed(b"data: " + b"z" * 5_000_000)


def test_the_size_cap_applies_per_event_not_per_stream() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    events: list[SSEEvent] = []
    for _ in range(100):
        events += decoder.feed(b"data: " + b"x" * 40 + b"\n\n")
    assert len(events) == 100


# ---- properties -------------------------------------------------------------------------

_FRAGMENTS = [
    b"data: ",
    b"data:",
    b"event:error",
    b"id:4",
    b": comment",
    b":HTTP_STATUS/200",
    b"retry:10",
    b'{"response":"',
    "你好".encode(),
    "👋".encode(),
    b"\xff",
    b"plain",
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b"\r\n\r\n",
]

streams = st.lists(st.sampled_from(_FRAGMENTS), max_size=40).map(b"".join)
line_text = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\r\n\ufffd"),
    max_size=30,
)


# A vendor's usual chunk is one whole `data:` event: the decoder takes it in one step.
_one_event_chunks = st.tuples(
    st.sampled_from([b"data: ", b"data:", b"data:  "]),
    st.lists(st.sampled_from([b'{"response":"', "你好".encode(), b"\xff", b"plain", b" ", b":"]),
             max_size=6).map(b"".join),
).map(lambda parts: parts[0] + parts[1] + b"\n\n")
_chunks = st.lists(st.one_of(_one_event_chunks, streams), max_size=12)


@settings(max_examples=300, deadline=None)
@given(chunks=_chunks)
def test_whole_event_chunks_yield_what_the_same_bytes_yield_line_by_line(
        chunks: list[bytes]) -> None:
    body = b"".join(chunks)
    cuts = [sum(len(c) for c in chunks[:i]) for i in range(1, len(chunks))]
    for options in ({}, {"keep_comments": True, "keep_other_lines": True}):
        bytewise = feed_in_pieces(body, list(range(len(body) + 1)), **options)
        assert feed_in_pieces(body, cuts, **options) == bytewise


def test_a_whole_event_chunk_after_a_byte_order_mark_and_over_the_cap_is_read_by_lines() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    assert decoder.feed(b"\xef\xbb\xbfdata: first\n\n") == [SSEEvent(data="first")]
    # 64 bytes: the data line and its LF (the cap counts an event's lines, not the blank one)
    assert decoder.feed(b"data: " + b"x" * 57 + b"\n\n") == [SSEEvent(data="x" * 57)]
    with pytest.raises(ProviderError):
        decoder.feed(b"data: " + b"x" * 58 + b"\n\n")


@settings(max_examples=300, deadline=None)
@given(body=streams, data=st.data())
def test_any_split_of_the_stream_yields_the_same_events(body: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=12))
    for options in ({}, {"keep_comments": True, "keep_other_lines": True}):
        whole = feed_in_pieces(body, [], **options)
        assert feed_in_pieces(body, cuts, **options) == whole
        assert feed_in_pieces(body, list(range(len(body) + 1)), **options) == whole


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.one_of(line_text.map(lambda t: "data: " + t), st.just("")), max_size=15))
def test_crlf_lf_and_cr_line_endings_are_equivalent(lines: list[str]) -> None:
    results = [
        decode_all(terminator.join(lines).encode() + terminator.encode() * 2)
        for terminator in ("\n", "\r\n", "\r")
    ]
    assert results[0] == results[1] == results[2]


@settings(max_examples=200, deadline=None)
@given(
    comments=st.lists(line_text.map(lambda t: ":" + t), max_size=10),
    data=st.data(),
)
def test_comments_alone_yield_no_events(comments: list[str], data: st.DataObject) -> None:
    body = "\n\n".join(comments).encode() + b"\n\n"
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=8))
    assert feed_in_pieces(body, cuts) == []


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=400), data=st.data())
def test_arbitrary_bytes_never_raise_out_of_the_parser(body: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=10))
    events = feed_in_pieces(body, cuts, keep_comments=True, keep_other_lines=True)
    assert all(isinstance(e.data, str) for e in events)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(line_text, min_size=1, max_size=5), data=st.data())
def test_valid_utf8_split_anywhere_decodes_without_replacement_chars(
    texts: list[str], data: st.DataObject
) -> None:
    body = "".join(f"data: {t}\n\n" for t in texts).encode()
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=20))
    events = feed_in_pieces(body, cuts)
    assert [e.data for e in events] == texts
    assert all("\ufffd" not in e.data for e in events)
