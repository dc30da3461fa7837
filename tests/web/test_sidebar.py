"""A sidebar that organises: pinned first, then by day in the reader's time zone and language,
row menus, search snippets with the match highlighted (and escaped), imported conversations
marked, and a small, fixed number of queries."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversations.chat import selectors, services
from conversations.models import Conversation, Message
from tests.support import model, signed_in

pytestmark = pytest.mark.django_db

NOW = datetime.datetime(2026, 11, 20, 12, 0, tzinfo=datetime.UTC)


def _chat(user: Any, title: str, *, age: datetime.timedelta = datetime.timedelta(0),
          **extra: Any) -> Conversation:
    conversation = services.conversation_create(user, model=model(), title=title)
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now() - age,
                                                           **extra)
    return conversation


def _say(conversation: Conversation, text: str) -> None:
    """A finished prompt in a conversation (no answer started: the limits stay out of it)."""
    Message.objects.create(conversation=conversation, seq=conversation.next_seq, role="user",
                           author=conversation.owner, content=text)
    Conversation.objects.filter(pk=conversation.pk).update(next_seq=conversation.next_seq + 1)
    conversation.next_seq += 1


def _groups_on_page(html: str) -> list[str]:
    return [part.split('"', 1)[0] for part in html.split('data-group="')[1:]]


def _sidebar(client: Client, path: str = "/", **cookies: str) -> str:
    for name, value in cookies.items():
        client.cookies[name] = value
    html = client.get(path).content.decode()
    return html.split('<aside class="sidebar"', 1)[1].split("</aside>", 1)[0]


def test_conversations_are_grouped_pinned_first_then_by_age(owner: Any) -> None:
    day = datetime.timedelta(days=1)
    _chat(owner, "today chat")
    _chat(owner, "yesterday chat", age=day)
    _chat(owner, "three days", age=3 * day)
    _chat(owner, "two weeks", age=14 * day)
    _chat(owner, "long ago", age=90 * day)
    _chat(owner, "pinned old", age=200 * day, pinned=True)
    html = _sidebar(signed_in(owner))
    groups = _groups_on_page(html)
    assert groups[:5] == ["pinned", "today", "yesterday", "week", "month"]
    assert len(groups) == 6 and groups[5][:4].isdigit()  # a month, e.g. "2026-08"
    for label in ["Pinned", "Today", "Yesterday", "Previous 7 days", "Previous 30 days"]:
        assert f">{label}</h2>" in html
    month = (timezone.now() - 90 * day).strftime("%B %Y")  # e.g. "August 2026"
    assert f">{month}</h2>" in html
    # Each conversation sits in its group: the pinned one first, whatever its age.
    assert html.index("pinned old") < html.index("today chat") < html.index("yesterday chat")


def test_groups_follow_the_reader_s_time_zone(owner: Any) -> None:
    # 23:30 UTC yesterday is already today in Shanghai (UTC+8) at 12:00 UTC.
    chat = _chat(owner, "late night")
    Conversation.objects.filter(pk=chat.pk).update(
        updated_at=datetime.datetime(2026, 11, 19, 23, 30, tzinfo=datetime.UTC))
    page = selectors.conversation_list_for_user(owner)
    utc = selectors.sidebar_groups(owner, page, zone=datetime.UTC, now=NOW)
    shanghai = selectors.sidebar_groups(owner, page, now=NOW,
                                        zone=selectors.user_zone("Asia/Shanghai"))
    assert [g.key for g in utc] == ["yesterday"]
    assert [g.key for g in shanghai] == ["today"]
    # The page writes the cookie URL-encoded.
    assert selectors.user_zone("Asia%2FShanghai") == selectors.user_zone("Asia/Shanghai")
    # A made-up zone falls back to the site's.
    assert selectors.user_zone("Mars/Olympus") == timezone.get_current_timezone()
    assert selectors.user_zone("../../etc/passwd") == timezone.get_current_timezone()


def test_the_time_zone_cookie_decides_what_today_is(owner: Any) -> None:
    chat = _chat(owner, "edge of the day")
    now = timezone.now()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)  # UTC
    if now.hour < 12:
        # 23:30 UTC yesterday is already today twelve hours east of UTC.
        moment, zone, in_utc, there = (midnight - datetime.timedelta(minutes=30), "Etc/GMT-12",
                                       "yesterday", "today")
    else:
        # 00:30 UTC today is still yesterday twelve hours west of UTC.
        moment, zone, in_utc, there = (midnight + datetime.timedelta(minutes=30), "Etc/GMT+12",
                                       "today", "yesterday")
    Conversation.objects.filter(pk=chat.pk).update(updated_at=moment)
    assert _groups_on_page(_sidebar(signed_in(owner), tz="UTC")) == [in_utc]
    assert _groups_on_page(_sidebar(signed_in(owner), tz=zone)) == [there]
    # A cookie that is not a time zone is ignored.
    assert _groups_on_page(_sidebar(signed_in(owner), tz="Nowhere/Atlantis")) == [in_utc]


def test_group_names_are_in_the_reader_s_language(owner: Any) -> None:
    day = datetime.timedelta(days=1)
    _chat(owner, "a", pinned=True)
    _chat(owner, "b")
    _chat(owner, "c", age=day)
    _chat(owner, "d", age=3 * day)
    _chat(owner, "e", age=14 * day)
    client = signed_in(owner)
    html = _sidebar(client, "/", django_language="zh-hans")
    for label in ["已置顶", "今天", "昨天", "过去 7 天", "过去 30 天"]:
        assert f">{label}</h2>" in html, label


def test_the_sidebar_takes_the_same_few_queries_however_many_conversations(
        owner: Any, member: Any) -> None:
    team = Group.objects.create(name="research")
    owner.groups.add(team)
    member.groups.add(team)

    def count(query: str = "") -> int:
        client = signed_in(owner)
        client.get("/")  # warm the session and the caches
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(f"/sidebar/?q={query}")
        assert response.status_code == 200
        return len(ctx.captured_queries)

    for i in range(3):
        chat = _chat(owner, f"llama {i}", pinned=i == 0)
        _say(chat, f"about llamas {i}")
    few, few_search = count(), count("llama")
    for i in range(25):
        chat = _chat(owner, f"alpaca {i}", age=datetime.timedelta(days=i * 5),
                     imported=i % 2 == 0)
        _say(chat, f"llama number {i}")
        if i % 3 == 0:
            Conversation.objects.filter(pk=chat.pk).update(team=team)
    assert count() == few
    assert count("llama") == few_search
    # The session, the user, the page's count and its rows (groups, snippets, teams and
    # models come with the rows).
    assert few == 4 and few_search == 4, (few, few_search)


def test_search_shows_the_matching_snippet_with_the_match_marked_and_escaped(
        owner: Any) -> None:
    chat = _chat(owner, "Groceries")
    _say(chat, (
        "A long preamble about nothing in particular, going on and on for a while, before "
        "<script>alert(1)</script> about LLAMAS and their wool, which is "
        "soft and warm and keeps going for a long time after the match as well."))
    html = _sidebar(signed_in(owner), "/?q=llama")
    snippet = html.split("data-snippet>", 1)[1].split("</span>", 1)[0]
    assert "<mark>LLAMA</mark>S" in snippet
    assert "&lt;script&gt;alert(1)&lt;/script&gt; about <mark>" in snippet
    assert "<script>alert" not in html
    assert snippet.startswith("…") and snippet.endswith("…")
    assert "Conversations matching “llama”: 1" in html


def test_a_title_match_is_marked_in_the_title_and_user_text_is_never_markup(owner: Any) -> None:
    _chat(owner, "<b>llama</b> & <i>friends</i>")
    html = _sidebar(signed_in(owner), "/?q=llama")
    title = html.split("data-conv-title>", 1)[1].split("</span>\n", 1)[0]
    assert "&lt;b&gt;<mark>llama</mark>&lt;/b&gt; &amp; &lt;i&gt;friends&lt;/i&gt;" in title
    assert "<b>" not in html and "<i>friends" not in html


def test_highlight_escapes_every_piece() -> None:
    assert str(selectors.highlight("a<b>c", "<b>")) == "a<mark>&lt;b&gt;</mark>c"
    assert str(selectors.highlight("Größe <x>", "größe")) == "<mark>Größe</mark> &lt;x&gt;"
    assert str(selectors.highlight("no match <x>", "zzz")) == "no match &lt;x&gt;"
    assert str(selectors.highlight("<x>", "")) == "&lt;x&gt;"


def test_imported_conversations_are_marked_imported(owner: Any) -> None:
    source = _chat(owner, "Exported chat")
    _say(source, "hello")
    client = signed_in(owner)
    data = client.get(f"/c/{source.pk}/export/?format=json").content
    response = client.post("/import/", {"file": _upload(data)})
    assert response.status_code == 302
    imported = Conversation.objects.exclude(pk=source.pk).get()
    assert imported.imported is True and not Conversation.objects.get(pk=source.pk).imported
    html = _sidebar(client)
    row = html.split(f'data-conversation-row="{imported.pk}"', 1)[1].split("</li>", 1)[0]
    assert "data-imported" in row and ">imported<" in row
    other = html.split(f'data-conversation-row="{source.pk}"', 1)[1].split("</li>", 1)[0]
    assert "data-imported" not in other


def _upload(data: bytes) -> Any:
    return SimpleUploadedFile("chat.json", data, content_type="application/json")


def test_row_menus_are_offered_for_own_conversations_only(owner: Any, member: Any) -> None:
    team = Group.objects.create(name="research")
    owner.groups.add(team)
    member.groups.add(team)
    mine = _chat(member, "mine")
    theirs = _chat(owner, "theirs", team=team)
    html = _sidebar(signed_in(member))
    row = html.split(f'data-conversation-row="{mine.pk}"', 1)[1].split("</li>", 1)[0]
    for action in ["rename", "pin", "archive", "delete"]:
        assert f'data-row-action="{action}"' in row
    assert f"/c/{mine.pk}/settings/#share" in row
    other = html.split(f'data-conversation-row="{theirs.pk}"', 1)[1].split("</li>", 1)[0]
    assert "data-row-menu" not in other


def test_row_actions_work_as_plain_forms_and_as_json(owner: Any) -> None:
    chat = _chat(owner, "Old title")
    client = signed_in(owner)
    response = client.post(f"/c/{chat.pk}/update/", {"title": "  New   title ", "next": "/"})
    assert response.status_code == 302 and response["Location"] == "/"
    response = client.post(f"/c/{chat.pk}/update/", {"pinned": "1"},
                           HTTP_ACCEPT="application/json")
    assert json.loads(response.content) == {"title": "New title", "pinned": True,
                                            "archived": False}
    client.post(f"/c/{chat.pk}/update/", {"archived": "1", "next": "https://evil.example/"})
    chat.refresh_from_db()
    assert chat.title == "New title" and chat.pinned and chat.archived
    assert "New title" not in _sidebar(client)
    assert "New title" in _sidebar(client, "/?archived=1")
    # An empty title is refused and changes nothing.
    response = client.post(f"/c/{chat.pk}/update/", {"title": "   "},
                           HTTP_ACCEPT="application/json")
    assert response.status_code == 400
    chat.refresh_from_db()
    assert chat.title == "New title"
    response = client.post(f"/c/{chat.pk}/delete/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200 and response.json() == {"deleted": True}
    assert not Conversation.objects.filter(pk=chat.pk).exists()
    assert not Message.objects.filter(conversation_id=chat.pk).exists()


def test_the_sidebar_fragment_keeps_the_current_row_and_forms_return_to_the_page(
        owner: Any, outsider: Any) -> None:
    chat = _chat(owner, "Current one")
    client = signed_in(owner)
    html = client.get(f"/sidebar/?current={chat.pk}").content.decode()
    assert 'aria-current="page"' in html
    assert f'name="next" value="/c/{chat.pk}/"' in html
    # Someone else's id as "current" reveals nothing and is not an error.
    html = signed_in(outsider).get(f"/sidebar/?current={chat.pk}").content.decode()
    assert "Current one" not in html
    assert signed_in(outsider).get("/sidebar/?current=not-a-uuid").status_code == 200
    assert Client().get("/sidebar/").status_code == 302
