"""The one token estimate: conservative, so a budget built on it is not overrun by the vendor.

No vendor here exposes a tokenizer, and Llama 3's is not shipped with the product. The estimate
counts UTF-8 bytes, which a C loop does at once:

- ASCII text: one token per 3 characters (Llama 3 averages about 4 on English: 3 leaves room);
- everything else: one token per 2 UTF-8 bytes, so 1.5 tokens per CJK character (Llama 3 uses
  about 1-1.3) and 2 per emoji (most are 1-3);
- each message costs a few tokens more for its chat-template header and end marker, and an image
  a fixed amount (UNCONFIRMED for every vendor: DashScope counts image tokens in its 8192-token
  context; 1,280 is what its emulator charges and more than the vendor's own sample reports).

Used for the context budget (conversations/answers/budget.py), for usage when a provider
reports none, and for Qianfan's local output cap.
"""

from __future__ import annotations

ASCII_CHARS_PER_TOKEN = 3
OTHER_BYTES_PER_TOKEN = 2
MESSAGE_OVERHEAD_TOKENS = 5
IMAGE_TOKENS = 1280


def _parts(text: str) -> tuple[int, int]:
    """(ASCII characters, UTF-8 bytes of everything else) of `text`."""
    if text.isascii():
        return len(text), 0
    ascii_chars = len(text.encode("ascii", "ignore"))
    return ascii_chars, len(text.encode("utf-8", "surrogatepass")) - ascii_chars


def _tokens(ascii_chars: int, other_bytes: int) -> int:
    return (-(-ascii_chars // ASCII_CHARS_PER_TOKEN)
            + -(-other_bytes // OTHER_BYTES_PER_TOKEN))


def estimate_tokens(text: str) -> int:
    """Tokens `text` costs at most, by the rule above (0 for empty text)."""
    return _tokens(*_parts(text))


class TokenCount:
    """The estimate of a text that grows piece by piece (an answer as it streams), kept
    without reading the whole text again: `estimate_tokens(a + b)` without `a`."""

    def __init__(self) -> None:
        self.ascii_chars = 0
        self.other_bytes = 0

    def with_text(self, text: str) -> int:
        """The estimate if `text` were added."""
        ascii_chars, other_bytes = _parts(text)
        return _tokens(self.ascii_chars + ascii_chars, self.other_bytes + other_bytes)

    def add(self, text: str) -> None:
        ascii_chars, other_bytes = _parts(text)
        self.ascii_chars += ascii_chars
        self.other_bytes += other_bytes


def estimate_message_tokens(text: str, images: int = 0) -> int:
    """One message of a chat: its text, its template overhead, its images."""
    return estimate_tokens(text) + MESSAGE_OVERHEAD_TOKENS + images * IMAGE_TOKENS
