"""Reads: what a user sees. Query counts stay constant whatever a conversation's length."""

from __future__ import annotations

import datetime
import uuid
import zoneinfo
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import unquote

from django.core.paginator import Page, Paginator
from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _

from chatsite.compiled import Compiled
from conversations.access import conversations_visible_to
from conversations.models import Conversation, Message, TeamSettings, UserPreferences
from conversations.retention.policy import Deadline, deadlines
from conversations.tree import NO_BOUND, path_up
from providers.models import ModelConfig

PAGE_SIZE = 50
LIST_PAGE_SIZE = 30


def conversation_list_for_user(user: Any, *, query: str = "", archived: bool = False,
                               page: int | str = 1) -> Page:
    """The user's own conversations and their teams', pinned first, newest first."""
    qs: QuerySet[Conversation] = conversations_visible_to(user).filter(
        archived=archived).select_related("team", "model")
    query = query.strip()[:200]
    if query:
        matching_messages = Message.objects.filter(content__icontains=query).values(
            "conversation_id")
        qs = qs.filter(Q(title__icontains=query) | Q(pk__in=matching_messages))
        # The first matching message of each conversation, in the same query (its snippet).
        qs = qs.annotate(match_text=Subquery(
            Message.objects.filter(conversation=OuterRef("pk"), content__icontains=query)
            .order_by("seq").values("content")[:1]))
    qs = qs.order_by("-pinned", "-updated_at").distinct()
    return Paginator(qs, LIST_PAGE_SIZE).get_page(page)


# --- the sidebar ----------------------------------------------------------------------------
SNIPPET_BEFORE = 40
SNIPPET_AFTER = 90


def highlight(text: str, query: str) -> SafeString:
    """`text` escaped, with the first case-insensitive match of `query` wrapped in <mark>.

    Only our own <mark> tags are markup: every piece of the user's text is escaped first.
    """
    index = text.casefold().find(query.casefold()) if query else -1
    # casefold may change lengths (ß -> ss); fall back to lower() positions then.
    if index >= 0 and len(text.casefold()) != len(text):
        index = text.lower().find(query.lower())
    if index < 0:
        return escape(text)
    end = index + len(query)
    return format_html("{}<mark>{}</mark>{}", text[:index], text[index:end], text[end:])


def snippet(text: str, query: str) -> SafeString:
    """A short, one-line piece of a message around the match, the match highlighted."""
    flat = " ".join(text.split())
    index = flat.lower().find(query.lower())
    if index < 0:
        return escape(flat[:SNIPPET_BEFORE + SNIPPET_AFTER])
    start = max(0, index - SNIPPET_BEFORE)
    end = min(len(flat), index + len(query) + SNIPPET_AFTER)
    piece = flat[start:end]
    return format_html("{}{}{}", "…" if start else "", highlight(piece, query),
                       "…" if end < len(flat) else "")


@dataclass
class SidebarRow:
    conversation: Conversation
    title_html: SafeString
    snippet_html: SafeString | None
    own: bool
    # The retention policy deletes it soon: the owner sees when (conversations/retention/).
    deletes: Deadline | None = None


@dataclass
class SidebarGroup:
    key: str
    label: str
    rows: list[SidebarRow]


def user_zone(name: str | None) -> datetime.tzinfo:
    """The browser's time zone (an IANA name, maybe URL-encoded) when it is a real one; the
    site's otherwise."""
    name = unquote(name or "")[:64]
    if name:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    return timezone.get_current_timezone()


def _group_of(updated: datetime.datetime, today: datetime.date, zone: datetime.tzinfo
              ) -> tuple[str, str]:
    day = timezone.localtime(updated, zone).date()
    age = (today - day).days
    if age <= 0:
        return "today", _("Today")
    if age == 1:
        return "yesterday", _("Yesterday")
    if age <= 7:
        return "week", _("Previous 7 days")
    if age <= 30:
        return "month", _("Previous 30 days")
    return f"{day:%Y-%m}", date_format(day, "YEAR_MONTH_FORMAT")


def sidebar_groups(user: Any, page: Page, *, query: str = "", zone: datetime.tzinfo | None = None,
                   now: datetime.datetime | None = None) -> list[SidebarGroup]:
    """The page's conversations in groups: pinned, then by age in the reader's time zone
    (today, yesterday, previous 7 days, previous 30 days, then by month). No query of its
    own: everything comes from the page's one query."""
    zone = zone or timezone.get_current_timezone()
    today = timezone.localtime(now or timezone.now(), zone).date()
    query = query.strip()[:200]
    groups: list[SidebarGroup] = []
    own_id = getattr(user, "pk", None)
    soon = deadlines([c for c in page if c.owner_id == own_id], now=now)
    for conversation in page:
        if conversation.pinned:
            key, label = "pinned", _("Pinned")
        else:
            key, label = _group_of(conversation.updated_at, today, zone)
        if not groups or groups[-1].key != key:
            groups.append(SidebarGroup(key, label, []))
        match = getattr(conversation, "match_text", None)
        groups[-1].rows.append(SidebarRow(
            conversation=conversation,
            title_html=highlight(conversation.display_title, query),
            snippet_html=snippet(match, query) if query and match else None,
            own=conversation.owner_id == own_id, deletes=soon.get(conversation.pk)))
    return groups


# --- models a user may pick -----------------------------------------------------------------
def _money(value: Decimal) -> str:
    if value >= Decimal("0.01"):
        return str(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
    return format(value.normalize(), "f")


def price_hint(model: ModelConfig) -> str:
    """E.g. "$0.05 / $0.34 per M tokens" (input / output), or "free"."""
    if not model.price_input_per_mtok and not model.price_output_per_mtok:
        return _("free")
    if model.currency == "USD":
        pair = f"${_money(model.price_input_per_mtok)} / ${_money(model.price_output_per_mtok)}"
    else:
        pair = (f"{_money(model.price_input_per_mtok)} / {_money(model.price_output_per_mtok)}"
                f" {model.currency}")
    return _("%(prices)s per M tokens") % {"prices": pair}


@dataclass
class ModelChoice:
    model: ModelConfig
    provider: str
    price: str

    @property
    def kind(self) -> str:
        return "vision" if self.model.vision else "text"

    @property
    def label(self) -> str:
        ability = _("vision") if self.model.vision else _("text")
        return " · ".join([self.model.display_name, self.provider, ability, self.price])


def model_choices(user: Any) -> list[ModelChoice]:
    """The models a user may use (one query), in the order set on the models page (a page
    groups them by provider, in the order of each provider's first model), with price hints."""
    models = ModelConfig.objects.visible_to(user).order_by("sort_order", "display_name")
    return [ModelChoice(m, m.provider.name, price_hint(m)) for m in models]


def default_model_for(user: Any, choices: list[ModelChoice]) -> ModelConfig | None:
    """A new chat's model: the user's remembered default when they may still use it, else
    the default of one of their teams (by team name), else the first choice."""
    preferred = (UserPreferences.objects.filter(user=user).values_list("default_model_id",
                                                                         flat=True).first())
    by_pk = {choice.model.pk: choice.model for choice in choices}
    if preferred in by_pk:
        return by_pk[preferred]
    team_defaults = TeamSettings.objects.filter(
        team__user=user, default_model__isnull=False).order_by("team__name").values_list(
        "default_model_id", flat=True)
    for pk in team_defaults:
        if pk in by_pk:
            return by_pk[pk]
    return choices[0].model if choices else None


@dataclass
class ThreadNode:
    message: Message
    sibling_ids: list[uuid.UUID] = field(default_factory=list)

    @property
    def sibling_index(self) -> int:
        return self.sibling_ids.index(self.message.id) + 1

    @property
    def sibling_count(self) -> int:
        return len(self.sibling_ids)

    @property
    def previous_sibling(self) -> uuid.UUID | None:
        i = self.sibling_ids.index(self.message.id)
        return self.sibling_ids[i - 1] if i > 0 else None

    @property
    def next_sibling(self) -> uuid.UUID | None:
        i = self.sibling_ids.index(self.message.id)
        return self.sibling_ids[i + 1] if i + 1 < len(self.sibling_ids) else None


@dataclass
class Thread:
    nodes: list[ThreadNode]
    has_older: bool
    oldest_seq: int | None


def _siblings(conversation: Conversation, parent_ids: set[uuid.UUID | None]
              ) -> dict[uuid.UUID | None, list[uuid.UUID]]:
    """parent id -> its children in creation order (attempts and edits), for these parents."""
    condition = Q(parent_id__in=[p for p in parent_ids if p is not None])
    if None in parent_ids:
        condition |= Q(parent__isnull=True)
    children: dict[uuid.UUID | None, list[uuid.UUID]] = {}
    for message_id, parent_id in (Message.objects.filter(condition, conversation=conversation)
                                  .order_by("seq").values_list("id", "parent_id")):
        children.setdefault(parent_id, []).append(message_id)
    return children


def thread(conversation: Conversation, *, before_seq: int | None = None,
           upto_seq: int | None = None, limit: int = PAGE_SIZE) -> Thread:
    """The messages of the active branch (the last `limit` before `before_seq`).

    Four queries at any length, paging included: the branch walked up from the active leaf
    (stopping once the page is full), the siblings of the messages shown, the messages
    (authors and models joined) and their attachments.
    """
    if conversation.active_leaf_id is None:
        return Thread(nodes=[], has_older=False, oldest_seq=None)
    bound = min(before_seq if before_seq is not None else NO_BOUND,
                upto_seq + 1 if upto_seq is not None else NO_BOUND)
    path = path_up(conversation, conversation.active_leaf_id, bound=bound, limit=limit)
    has_older = len(path) > limit
    window = path[-limit:] if limit else []
    children = _siblings(conversation, {parent for _mid, parent in window})
    messages = {m.id: m for m in Message.objects.filter(pk__in=[mid for mid, _p in window])
                .select_related("author", "model").prefetch_related("attachments",
                                                                     "documents")}
    nodes = [ThreadNode(messages[mid], children.get(parent, [mid])) for mid, parent in window]
    oldest = nodes[0].message.seq if nodes else None
    return Thread(nodes=nodes, has_older=has_older, oldest_seq=oldest)


def node_for(message: Message, siblings: list[uuid.UUID] | None = None) -> ThreadNode:
    """One message with its siblings (attempts or edits under the same parent); `siblings`
    when the caller knows them (a first answer just stored under its new prompt is alone)."""
    if siblings is None and message.parent_id is not None:
        siblings = [row[0] for row in _SIBLINGS.rows(conversation=message.conversation_id,
                                                      parent=message.parent_id)]
    elif siblings is None:  # the first prompts of a conversation (compiled values are not None)
        siblings = list(Message.objects.filter(conversation_id=message.conversation_id,
                                               parent_id=None)
                        .order_by("seq").values_list("pk", flat=True))
    return ThreadNode(message, siblings)


# A message's siblings, in order: every POST reply reads its prompt's (chatsite/compiled.py).
_SIBLINGS = Compiled(
    lambda conversation, parent: Message.objects.filter(
        conversation_id=conversation, parent_id=parent).order_by("seq").values_list("pk"),
    conversation=Message._meta.get_field("conversation"), parent=Message._meta.get_field("parent"))


def retention_deadline(user: Any, conversation: Conversation) -> Deadline | None:
    """For the conversation page: when the retention policy deletes it, shown to its owner
    within the week before (conversations/retention/policy.py)."""
    if conversation.owner_id != getattr(user, "pk", None):
        return None
    return deadlines([conversation]).get(conversation.pk)


def active_messages(conversation: Conversation) -> list[Message]:
    return list(Message.objects.filter(conversation=conversation,
                                       status__in=["queued", "streaming"]).order_by("seq"))
