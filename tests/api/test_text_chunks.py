"""`/v1`'s text chunks are encoded around a cached envelope (issue 16); a client must get the
very bytes the whole chunk's encoding gives, whatever the text and whichever model answers."""

from __future__ import annotations

import json

import pytest

from conversations.api.completions import Completion
from conversations.api.prepare import Prepared
from providers.base import ChatRequest
from providers.models import ModelConfig, Provider

TEXTS = ["Hello", "", " world", 'a "quoted" \\ back', "line\nbreak\ttab", "\x00\x1f\x7f",
         "汉字 ünïcödé", "🦙 emoji", "</script><!--", "\u2028\u2029", "\x00text\x00"]


def completion(slug: str) -> Completion:
    model = ModelConfig(slug=slug, provider=Provider(kind="cloudflare"))
    request = ChatRequest(model="@cf/meta/llama-3.2-3b-instruct", messages=())
    return Completion(Prepared(model=model, request=request, record_id=0, attachment_ids=[],
                               prompt_chars=0))


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_text_chunk_is_the_whole_chunk_encoded(include_usage: bool) -> None:
    call = completion("llama-3.2-3b")
    for text in TEXTS:
        chunk = call.text_chunk(text, include_usage)
        assert chunk == call.chunk({"content": text}, include_usage=include_usage)
        payload = json.loads(chunk.removeprefix(b"data: ").removesuffix(b"\n\n"))
        assert payload["choices"][0]["delta"] == {"content": text}


def test_a_fallback_model_names_itself_in_the_next_chunks() -> None:
    call = completion("first-model")
    call.text_chunk("x")
    call.slug = "fallback-model"  # what a fallback before the first text does
    assert json.loads(call.text_chunk("y")[6:])["model"] == "fallback-model"
    assert call.text_chunk("y", True) == call.chunk({"content": "y"}, include_usage=True)


def test_a_model_name_holding_the_mark_still_gets_exact_chunks() -> None:
    call = completion("\x00text\x00")  # the mark itself: the envelope cannot be split
    for text in TEXTS:
        assert call.text_chunk(text) == call.chunk({"content": text})
    assert call._around_text is None  # every chunk was encoded whole
