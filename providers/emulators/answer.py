"""The deterministic "model": an answer derived from the prompt, split into word-ish tokens.

The answer always carries multi-byte UTF-8 (CJK and a 4-byte emoji) and a little Markdown,
so every stream exercises the UTF-8 and rendering paths, e.g.::

    Echo: what is a llama? \u2014 你好 🦙 **ok**
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from providers.emulators.faults import Plan, strip_magic

DEFAULT_MIN_TOKENS = 12
SNIPPET_CHARS = 40

# One token: leading whitespace plus a word, one CJK character, or a Markdown marker.
_TOKEN = re.compile(r"\s*(?:\*\*|\*|[\u3000-\u9fff]|[^\s*\u3000-\u9fff]+)")
_FILLER = (
    " lorem",
    " ipsum",
    " 世",
    "界",
    " dolor",
    " 🦙",
    " sit",
    " *amet*",
    ",",
    " `code`",
    " \u00e9t\u00e9",
    ".",
)
_HTML = (
    ' <script>alert("emu")</script>',
    " <img src=x onerror=alert(1)>",
    " [click](javascript:alert(1))",
    ' {"tool_calls":[{"name":"rm","arguments":{"path":"/"}}]}',
    " <b>bold</b>",
)
_CONTROL = (" nul\u0000byte", " bell\u0007", " escape\u001b[0m")
_HUGE_UNIT = "emu-huge-event-0123456789abcdef "


@dataclass(frozen=True)
class Answer:
    tokens: tuple[str, ...]
    truncated: bool = False  # cut short by the request's own max-tokens limit

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


def snippet(user_text: str) -> str:
    """The first 40 characters of the user's text, magic markers removed, on one line."""
    clean = " ".join(strip_magic(user_text).split())
    return clean[:SNIPPET_CHARS] or "(no text)"


def base_tokens(user_text: str) -> list[str]:
    return tokenize(f"Echo: {snippet(user_text)} \u2014 你好 🦙 **ok**")


def build_answer(user_text: str, plan: Plan, max_tokens: int | None = None) -> Answer:
    if plan.verbatim:
        # Every character exactly as typed (newlines included): lets a test make the "model"
        # say anything, e.g. an XSS corpus or a Markdown sample.
        body = strip_magic(user_text).lstrip(" ")
        tokens = [body[i:i + 4] for i in range(0, len(body), 4)] or ["(no text)"]
        return Answer(tuple(tokens[:max_tokens] if max_tokens else tokens),
                      max_tokens is not None and max_tokens < len(tokens))
    tokens = base_tokens(user_text)
    if plan.html:
        tokens[1:1] = _HTML
    if plan.control_chars:
        tokens[1:1] = _CONTROL
    wanted = plan.n_tokens if plan.n_tokens is not None else max(DEFAULT_MIN_TOKENS, len(tokens))
    index = 0
    while len(tokens) < wanted:
        tokens.append(_FILLER[index % len(_FILLER)])
        index += 1
    tokens = tokens[:wanted]
    if plan.huge_bytes and tokens:
        tokens[-1] = huge_text(plan.huge_bytes)
    truncated = max_tokens is not None and max_tokens < len(tokens)
    if truncated and max_tokens is not None:
        tokens = tokens[:max_tokens]
    return Answer(tuple(tokens), truncated)


def huge_text(size: int) -> str:
    """About `size` bytes of text, mostly ASCII, ending with a CJK character."""
    repeats = max(1, size // len(_HUGE_UNIT))
    return " " + _HUGE_UNIT * repeats + "界"


def count_tokens(text: str) -> int:
    """A stable, rough token count for usage fields (about four characters per token)."""
    return max(1, math.ceil(len(text) / 4))
