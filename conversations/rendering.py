"""The one renderer for untrusted text: model output, user messages and titles.

Everything that reaches a page goes through :func:`sanitize_html` last (threat T01: the
sanitiser runs on the *final* HTML, after Markdown, never before it). Two layers:

1. Markdown is parsed with raw HTML disabled (``html=False``), so ``<script>``, ``<img>``,
   ``<iframe>``... in the source come out as escaped text. Links are only produced for
   ``http:``, ``https:`` and ``mailto:`` URLs (checked after entity decoding and URL
   normalisation); anything else stays visible as plain text.
2. nh3 (ammonia) cleans the result against an explicit allow-list of tags, attributes and
   classes, again restricting ``href`` to those schemes and denying relative URLs.

Images in model output are never loaded (threat T04): ``![alt](url)`` becomes a link
"alt (image link)" the user may click; no ``<img>`` tag is ever emitted or allowed.

Streaming (architecture, hot path step 6) renders completed top-level blocks once and shows
the open tail as escaped text. :func:`split_stable` finds where the completed blocks end;
see its docstring for the invariant that makes the live DOM equal a reload.

Reference-style link definitions (``[x]: https://...``) are disabled: a definition arriving
later would turn an *earlier*, already-sent paragraph into a link, which breaks the streaming
invariant. Such lines render as ordinary text; inline links ``[x](url)`` work as usual.
GFM autolinking of bare URLs (linkify) needs linkify-it-py, which is not installed, so bare
URLs stay text; ``<https://...>`` autolinks work.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import nh3
from django.core.cache import cache
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.renderer import RendererHTML
from markdown_it.rules_block import StateBlock
from markdown_it.rules_inline import StateInline
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

__all__ = [
    "pygments_css",
    "remember_rendered",
    "render_markdown",
    "render_markdown_cached",
    "render_plain",
    "render_stream_parts",
    "render_user_message",
    "sanitize_html",
    "split_stable",
]

# --------------------------------------------------------------------------- URLs

#: Only these produce links. Checked on the normalised URL (entities decoded, control
#: characters and spaces percent-encoded), so ``jav&#x61;script:`` or ``java\tscript:``
#: cannot pass: they do not start with one of these prefixes.
_SAFE_URL_RE = re.compile(r"(?:https?://[^\s/?#]|mailto:[^\s])", re.IGNORECASE)
_CONTROL_OR_SPACE_RE = re.compile(r"[\x00-\x20\x7f-\x9f]")


def is_safe_url(url: str) -> bool:
    """True if ``url`` may become an ``href``: http(s) with a host, or mailto."""
    return bool(_SAFE_URL_RE.match(url)) and not _CONTROL_OR_SPACE_RE.search(url)


# --------------------------------------------------------------------------- sanitiser

_PYGMENTS_CLASSES = frozenset(cls for cls in STANDARD_TYPES.values() if cls)

_ALLOWED_TAGS = {
    "a", "blockquote", "br", "button", "code", "del", "div", "em", "h1", "h2", "h3", "h4",
    "h5", "h6", "hr", "li", "ol", "p", "pre", "s", "span", "strong", "table", "tbody", "td",
    "th", "thead", "tr", "ul",
}  # fmt: skip
_ALLOWED_ATTRIBUTES = {
    "*": set(),  # ammonia otherwise allows `lang` and `title` on every tag
    # No `title`: link titles are rarely useful and keep attribute text to URLs and classes.
    "a": {"href"},
    "ol": {"start"},
    "button": {"data-copy"},
}
_ALLOWED_CLASSES = {
    "a": {"image-link"},
    "button": {"copy-btn"},
    "code": {"math"},
    "div": {"code-block", "code-header"},
    "p": {"tail"},
    "pre": {"highlight", "math"},
    "span": {"code-lang", *_PYGMENTS_CLASSES},
    "td": {"align-left", "align-center", "align-right"},
    "th": {"align-left", "align-center", "align-right"},
}
_DIGITS_RE = re.compile(r"\d{1,9}")


def _attribute_filter(tag: str, attribute: str, value: str) -> str | None:
    # Second check of link targets, independent of the Markdown layer.
    if attribute == "href":
        return value if is_safe_url(value) else None
    if attribute == "start":
        return value if _DIGITS_RE.fullmatch(value) else None
    if attribute == "data-copy":
        return ""
    return value


_CLEANER = nh3.Cleaner(
    tags=_ALLOWED_TAGS,
    clean_content_tags={"script", "style"},
    attributes=_ALLOWED_ATTRIBUTES,
    attribute_filter=_attribute_filter,
    strip_comments=True,
    link_rel="noopener noreferrer nofollow",
    tag_attribute_values={"button": {"type": {"button"}}},
    set_tag_attribute_values={"a": {"target": "_blank"}},
    url_schemes={"http", "https", "mailto"},
    allowed_classes=_ALLOWED_CLASSES,
    url_relative="deny",
)


def sanitize_html(html: str) -> str:
    """The single sanitiser: every HTML string we render passes through here last."""
    return _CLEANER.clean(html)


# --------------------------------------------------------------------------- code blocks

#: Above this size a block is shown without highlighting: Pygments is pure-Python regex
#: work and some lexers backtrack badly on hostile input.
_MAX_HIGHLIGHT_CHARS = 100_000
_LANG_RE = re.compile(r"[A-Za-z0-9_+#.\-]{1,40}")
_FORMATTER = HtmlFormatter(nowrap=True)


def _language_of(info: str) -> str:
    words = info.split()
    if not words or not _LANG_RE.fullmatch(words[0]):
        return ""
    return words[0].lower()


@lru_cache(maxsize=128)
def _lexer_for(language: str) -> Lexer | None:
    try:
        return get_lexer_by_name(language, stripnl=False, ensurenl=False)
    except ClassNotFound:
        return None


def _highlighted(code: str, language: str) -> str:
    lexer = _lexer_for(language) if language else None
    if lexer is None or len(code) > _MAX_HIGHLIGHT_CHARS:
        return escapeHtml(code)
    return str(highlight(code, lexer, _FORMATTER))


def _code_block_html(code: str, language: str) -> str:
    # The copy button has no handler here: static JS finds [data-copy] (CSP forbids inline).
    return (
        '<div class="code-block"><div class="code-header">'
        f'<span class="code-lang">{escapeHtml(language or "text")}</span>'
        '<button type="button" class="copy-btn" data-copy>Copy</button></div>'
        f'<pre class="highlight"><code>{_highlighted(code, language)}</code></pre></div>\n'
    )


def _math_block_html(content: str) -> str:
    return f'<pre class="math"><code>{escapeHtml(content)}</code></pre>\n'


def pygments_css() -> str:
    """CSS for highlighted code: light by default, dark under prefers-color-scheme."""

    def scoped(style: str) -> str:
        defs = HtmlFormatter(style=style).get_style_defs(".highlight")
        # Drop the global `pre { ... }` / `td.linenos` rules; keep our scope only.
        return "\n".join(line for line in defs.splitlines() if line.startswith(".highlight"))

    dark = "\n".join("  " + line for line in scoped("github-dark").splitlines())
    return f"{scoped('default')}\n@media (prefers-color-scheme: dark) {{\n{dark}\n}}\n"


# --------------------------------------------------------------------------- math

_MATH_BLOCK_CLOSERS = {"$$": "$$", "\\[": "\\]"}


def _line(state: StateBlock, line: int) -> str:
    """The line's text without its indentation (and without container markers)."""
    return state.src[state.bMarks[line] + state.tShift[line] : state.eMarks[line]]


def _math_block_opening(first_line: str) -> tuple[str, str | None] | None:
    """(opener, content of a one-line block or None for a multi-line one), or None."""
    text = first_line.rstrip()
    for opener, closer in _MATH_BLOCK_CLOSERS.items():
        if not text.startswith(opener):
            continue
        rest = text[len(opener) :]
        if not rest.strip():
            return opener, None
        inner = rest[: -len(closer)].strip()
        if rest.endswith(closer) and inner:
            return opener, inner
    return None


def _math_block_rule(state: StateBlock, start_line: int, end_line: int, silent: bool) -> bool:
    """``$$``/``\\[`` on a line of its own opens a block closed by a line ending in the closer.

    Like a code fence it is decided by its first line alone and, if unclosed, runs to the
    end of the container; ``$$ x $$`` on one line is a one-line block. A line such as
    ``$$100 million`` is not an opener, so prose starting with dollars is left alone.
    """
    if state.is_code_block(start_line):
        return False
    opening = _math_block_opening(_line(state, start_line))
    if opening is None:
        return False
    if silent:
        return True
    opener, content = opening
    closer = _MATH_BLOCK_CLOSERS[opener]
    closed = content is not None
    next_line = start_line + 1
    if content is None:
        last = ""
        while next_line < end_line:
            text = _line(state, next_line)
            if text and state.sCount[next_line] < state.blkIndent:
                break  # the enclosing list item / blockquote ended
            if text.rstrip().endswith(closer):
                closed, last = True, text.rstrip()[: -len(closer)].rstrip()
                break
            next_line += 1
        body = state.getLines(start_line + 1, next_line, state.sCount[start_line], True)
        content = (body + last).strip("\n")
        if closed:
            next_line += 1
    state.line = next_line
    token = state.push("math_block", "math", 0)
    token.content = content
    token.markup = opener
    token.map = [start_line, next_line]
    token.meta = {"closed": closed}
    return True


#: Valid closers of inline math, found once per inline source (see _closers).
#: A single ``$`` closes only if not preceded by space, backslash or ``$`` and not followed
#: by a digit or ``$``, so "$5 and $10" is not math.
_CLOSER_PATTERNS = {
    "$": re.compile(r"(?<![\s\\$])\$(?![\d$])"),
    "$$": re.compile(r"\$\$"),
    "\\)": re.compile(r"\\\)"),
    "\\]": re.compile(r"\\\]"),
}
_INLINE_OPENERS = {"$$": "$$", "$": "$", "\\(": "\\)", "\\[": "\\]"}


def _closers(state: StateInline, closer: str) -> list[int]:
    # Cached per (source, closer) for the whole render, so a paragraph full of unmatched
    # dollars stays linear instead of rescanning to its end for every opener.
    cache: dict[tuple[str, str], list[int]] = state.env.setdefault("_math_closers", {})
    key = (state.src, closer)
    if key not in cache:
        cache[key] = [m.start() for m in _CLOSER_PATTERNS[closer].finditer(state.src)]
    return cache[key]


def _math_inline_rule(state: StateInline, silent: bool) -> bool:
    src, pos, maximum = state.src, state.pos, state.posMax
    if src[pos] not in "$\\":
        return False
    if src.startswith("$$", pos):
        opener = "$$"
    elif src[pos] == "$":
        opener = "$"
    elif src.startswith(("\\(", "\\["), pos):
        opener = src[pos : pos + 2]
    else:
        return False
    closer = _INLINE_OPENERS[opener]
    start = pos + len(opener)
    if start >= maximum or (opener == "$" and src[start].isspace()):
        return False  # "$ 5" is money; the other delimiters are unambiguous
    positions = _closers(state, closer)
    index = bisect.bisect_left(positions, start + 1)
    if index == len(positions) or positions[index] + len(closer) > maximum:
        return False
    end = positions[index]
    if not silent:
        token = state.push("math_inline", "math", 0)
        token.content = src[start:end]
        token.markup = opener
    state.pos = end + len(closer)
    return True


# --------------------------------------------------------------------------- renderer rules


def _render_fence(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    token = tokens[idx]
    language = _language_of(token.info)
    if language == "math":
        return _math_block_html(token.content.rstrip("\n"))
    return _code_block_html(token.content, language)


def _render_code_block(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    return _code_block_html(tokens[idx].content, "")


def _render_math_block(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    return _math_block_html(tokens[idx].content)


def _render_math_inline(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    return f'<code class="math">{escapeHtml(tokens[idx].content)}</code>'


def _render_link_open(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    token = tokens[idx]
    env["_link_depth"] = env.get("_link_depth", 0) + 1
    token.attrSet("target", "_blank")
    token.attrSet("rel", "noopener noreferrer nofollow")
    return self.renderToken(tokens, idx, options, env)


def _render_link_close(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    env["_link_depth"] = env.get("_link_depth", 0) - 1
    return self.renderToken(tokens, idx, options, env)


def _render_image(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    """Never an ``<img>``: the browser must not fetch attacker-chosen URLs (T04)."""
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children, options, env).strip()
    label = escapeHtml(f"{alt} (image link)" if alt else "image link")
    src = str(token.attrGet("src") or "")
    if env.get("_link_depth", 0) > 0 or not is_safe_url(src):
        return label  # already inside a link (no nested <a>), or nothing safe to link to
    return (
        f'<a href="{escapeHtml(src)}" class="image-link" target="_blank" '
        f'rel="noopener noreferrer nofollow">{label}</a>'
    )


def _render_table_cell_open(
    self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    # markdown-it aligns cells with style="text-align:..."; styles are not allowed, classes are.
    token = tokens[idx]
    style = str(token.attrs.pop("style", ""))
    if style.startswith("text-align:"):
        token.attrSet("class", "align-" + style.removeprefix("text-align:"))
    return self.renderToken(tokens, idx, options, env)


class _SafeMarkdownIt(MarkdownIt):
    def validateLink(self, url: str) -> bool:
        return is_safe_url(url)


def _build_markdown(*, breaks: bool, block_only: bool = False) -> MarkdownIt:
    md = _SafeMarkdownIt(
        "commonmark",
        {"html": False, "linkify": False, "typographer": False, "breaks": breaks,
         "xhtmlOut": False},
    )  # fmt: skip
    md.enable(["table", "strikethrough"])
    md.disable("reference")  # see module docstring: later definitions would rewrite old HTML
    md.block.ruler.before(
        "fence",
        "math_block",
        _math_block_rule,
        {"alt": ["paragraph", "reference", "blockquote", "list"]},
    )
    md.inline.ruler.before("escape", "math_inline", _math_inline_rule)
    if block_only:
        md.disable("inline")  # split_stable only needs block structure
    rules: dict[str, Any] = {
        "fence": _render_fence,
        "code_block": _render_code_block,
        "math_block": _render_math_block,
        "math_inline": _render_math_inline,
        "link_open": _render_link_open,
        "link_close": _render_link_close,
        "image": _render_image,
        "th_open": _render_table_cell_open,
        "td_open": _render_table_cell_open,
    }
    for name, rule in rules.items():
        md.add_render_rule(name, rule)
    return md


_MD = _build_markdown(breaks=False)
_MD_HARD_BREAKS = _build_markdown(breaks=True)
_MD_BLOCKS = _build_markdown(breaks=False, block_only=True)


# --------------------------------------------------------------------------- public API


def render_markdown(text: str) -> str:
    """Render untrusted Markdown (model output) to sanitised HTML.

    CommonMark + GFM tables + strikethrough, raw HTML escaped, links only to
    http/https/mailto (with target=_blank and rel=noopener noreferrer nofollow), images as
    links, fenced code highlighted with Pygments classes, math shown as code.
    """
    return sanitize_html(_MD.render(text))


#: Bump when the renderer's output changes (sanitiser rules, highlighting): old cached HTML
#: is then simply never read again.
RENDER_VERSION = "1"
_CACHE_MIN_CHARS = 200
_CACHE_SECONDS = 3600  # bounded: Redis runs with noeviction (docs/deployment.md)
_log = logging.getLogger(__name__)


def _render_key(text: str) -> str:
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return f"md:{RENDER_VERSION}:{digest}"


def render_markdown_cached(text: str) -> str:
    """:func:`render_markdown` for finished text, through Django's cache.

    A finished answer never changes, yet a page shows up to 50 of them and rendering one takes
    about 2 ms. The key is a hash of the text itself, so the value can only be what
    :func:`render_markdown` makes of it. When the cache is down the page still renders.
    """
    if len(text) < _CACHE_MIN_CHARS:
        return render_markdown(text)
    key = _render_key(text)
    try:
        html = cache.get(key)
    except Exception as exc:  # the cache is an optimisation: never fail a page for it
        _log.warning("markdown cache unavailable: %s", type(exc).__name__)
        return render_markdown(text)
    if isinstance(html, str):
        return html
    html = render_markdown(text)
    _store(key, html)
    return html


def remember_rendered(text: str, html: str) -> None:
    """Cache `html` as what :func:`render_markdown_cached` returns for `text`, for HTML made
    already: the rendered stable pieces of a streamed answer, which add up to the rendering of
    the whole (see :func:`split_stable`). Each piece went through the sanitiser."""
    if len(text) >= _CACHE_MIN_CHARS:
        _store(_render_key(text), html)


def _store(key: str, html: str) -> None:
    try:
        cache.set(key, html, _CACHE_SECONDS)
    except Exception as exc:  # the cache is an optimisation: never fail for it
        _log.warning("markdown cache unavailable: %s", type(exc).__name__)


def render_user_message(text: str) -> str:
    """Like :func:`render_markdown`, but a single newline is a line break, as users expect."""
    return sanitize_html(_MD_HARD_BREAKS.render(text))


def render_plain(text: str) -> str:
    """Escaped text only (no Markdown), newlines as ``<br>``: titles, the streaming tail."""
    escaped = escapeHtml(text.replace("\r\n", "\n").replace("\r", "\n"))
    return sanitize_html(escaped.replace("\n", "<br>"))


_LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")
_CLOSING_FENCE_RE = re.compile(r" {0,3}(`{3,}|~{3,})[ \t]*")


def _complete_lines_end(text: str) -> int:
    """Offset just past the last line break; a trailing lone CR may still become CRLF."""
    end = max(text.rfind("\n"), text.rfind("\r")) + 1
    if end == len(text) and text.endswith("\r"):
        end = max(text.rfind("\n", 0, end - 1), text.rfind("\r", 0, end - 1)) + 1
    return end


#: Top-level blocks that a blank line ends for good: nothing after a blank line can join
#: them (no lazy continuation, setext underline or table row across a blank line).
#: Lists and indented code are absent on purpose: they continue across blank lines.
_ENDED_BY_BLANK_LINE = frozenset(
    {"paragraph_open", "blockquote_open", "table_open", "heading_open", "hr"}
)


def _is_closed(token: Token, lines: list[str]) -> bool:
    """True if nothing appended later can change this (last) top-level block.

    ``lines`` are the complete lines parsed; the block is the last one, so any lines after
    its end are blank.
    """
    if token.map is None:
        return False
    first, end = token.map
    if token.type in _ENDED_BY_BLANK_LINE and end < len(lines):
        return True
    if token.type in ("heading_open", "hr"):
        # One-line blocks, except that "# a | b" followed by a "-|-" line becomes a table
        # header: with a pipe, wait for the next line.
        return not any("|" in line for line in lines[first:end])
    if token.type == "math_block":
        return bool(token.meta.get("closed"))
    if token.type == "fence" and end - first >= 2:
        match = _CLOSING_FENCE_RE.fullmatch(lines[end - 1])
        return (
            match is not None
            and match.group(1)[0] == token.markup[0]
            and len(match.group(1)) >= len(token.markup)
        )
    return False


def split_stable(text: str, start: int = 0) -> int:
    """Length of the prefix of ``text`` made of completed top-level blocks.

    Returns ``s`` (``start <= s <= len(text)``) such that for EVERY continuation ``rest``::

        render_markdown(text[:s]) + render_markdown((text + rest)[s:])
            == render_markdown(text + rest)

    and ``split_stable(text + rest) >= s`` (the stable prefix never shrinks). So a streaming
    consumer may send ``render_markdown(text[s_old:s_new])`` once per newly stable piece and
    append it: the concatenation of all pieces plus the rendering of the final tail equals
    what a reload renders.

    How: only complete lines are parsed (block structure only). Every top-level block except
    the last is closed, because the block after it has already started. The last one is
    closed only if it cannot grow: a paragraph, blockquote, table or heading followed by a
    blank line; a heading or thematic break (without a ``|``, which a later ``-|-`` line
    could turn into a table header); a code fence or ``$$``/``\\[`` block whose closing line
    arrived. The prefix ends where the first open block starts. So a list or indented code
    block (both continue across blank lines) becomes stable only once a following block has
    started, and an open fence keeps everything from the fence on unstable.

    ``start`` must be a value this function returned earlier for a prefix of ``text`` (or
    0); only ``text[start:]`` is parsed, so calling it per delta stays linear overall.
    """
    region = text[start:]
    complete = _complete_lines_end(region)
    if complete == 0:
        return start
    source = region[:complete]
    tokens = [t for t in _MD_BLOCKS.parse(source) if t.level == 0 and t.map is not None]
    if not tokens:
        return start
    line_starts = [0, *(m.end() for m in _LINE_BREAK_RE.finditer(source))]
    last = tokens[-1]
    assert last.map is not None
    lines = _LINE_BREAK_RE.split(source)[:-1]  # source ends with a break: drop the ""
    stable_line = last.map[1] if _is_closed(last, lines) else last.map[0]
    return start + line_starts[stable_line]


def render_stream_parts(text: str) -> tuple[str, str]:
    """(HTML of the stable prefix, HTML of the open tail) for a partial answer.

    The tail is escaped text in ``<p class="tail">`` with ``<br>`` for newlines; empty
    string when there is no non-blank tail.
    """
    stable = split_stable(text)
    tail = text[stable:]
    shown = tail.rstrip("\r\n")
    tail_html = sanitize_html(f'<p class="tail">{render_plain(shown)}</p>') if tail.strip() else ""
    return render_markdown(text[:stable]), tail_html
