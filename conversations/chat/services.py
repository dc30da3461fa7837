"""Writes: every change to conversations goes through these functions.

A service owns its use case: it validates, writes in one transaction, and registers what
follows with `transaction.on_commit` (starting the answer through answers/jobs.py, telling
the other viewers). Views only parse, check access (access.py), call, and shape the reply.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils.translation import gettext as _

from chatsite.compiled import Compiled
from conversations import events
from conversations.access import Access, preset_access
from conversations.answers import drain, jobs, titles
from conversations.answers.budget import check_prompt
from conversations.documents.store import attach_documents
from conversations.errors import ServiceError
from conversations.images.attachments import attach, images_in_branch
from conversations.models import (
    ACTIVE_STATUSES,
    Attachment,
    Conversation,
    Document,
    Message,
    MessageStatus,
    Preset,
    UserPreferences,
)
from conversations.sharing.links import share_group
from conversations.tree import latest_leaf_under
from conversations.usage import accounting
from providers.base import ProviderError
from providers.models import ModelConfig, is_visible_to
from providers.params import validate_params


def _check_model(user: Any, model: ModelConfig | None) -> ModelConfig:
    if model is None or not is_visible_to(user, model.pk):
        raise ServiceError("model_unavailable",
                           _("This model is not available. Pick another one."), 400)
    return model


def clean_params(model: ModelConfig, params: dict[str, Any]) -> dict[str, Any]:
    try:
        return validate_params(model.model_id, params)
    except ProviderError as exc:
        raise ServiceError("bad_parameter", exc.message) from None


def auto_title(text: str) -> str:
    """The provisional title: the prompt's cleaned first line (a model names the conversation
    after its first answer: answers/titles.py)."""
    return titles.provisional_title(text)


def conversation_create(user: Any, *, model: ModelConfig | None, system_prompt: str = "",
                        params: dict[str, Any] | None = None, title: str = "",
                        preset: Preset | None = None) -> Conversation:
    """`preset`: the one the chat was started from (recorded; what it holds was copied into
    the other arguments, so later edits of the preset change nothing here)."""
    if preset is not None and preset_access(user, preset) < Access.READ:
        raise ServiceError("preset_not_found", _("This preset is not available."), 404)
    if preset is not None and model is not None and model.pk == preset.model_id and not \
            ModelConfig.objects.visible_to(user).filter(pk=model.pk).exists():
        raise ServiceError("model_unavailable", _(
            "The model of the preset “%(name)s” is not available to you. Ask its publisher "
            "or an administrator, or pick another model.") % {"name": preset.name}, 400)
    model = _check_model(user, model)
    return Conversation.objects.create(
        owner=user, model=model, system_prompt=system_prompt.strip()[:20_000],
        params=clean_params(model, params or {}), title=title.strip()[:200],
        title_is_auto=not title.strip(), preset=preset,
    )


def conversation_create_from_preset(user: Any, preset: Preset, *,
                                    title: str = "") -> Conversation:
    """A new conversation with a copy of the preset's model, system prompt and parameters."""
    return conversation_create(user, model=preset.model, system_prompt=preset.system_prompt,
                               params=dict(preset.params or {}), title=title, preset=preset)


@dataclass
class PostResult:
    user_message: Message
    assistant_message: Message
    created: bool
    warnings: list[str] = field(default_factory=list)  # e.g. a budget nearly used up


def _validate_text(text: str) -> str:
    text = text.strip()
    if not text:
        raise ServiceError("empty", _("Write a message first."))
    return text


def _check_limits(user: Any, conversation: Conversation, prompt_chars: int) -> list[str]:
    """Budgets, rate and concurrency limits and prompt size: the same rules as the API."""
    try:
        return accounting.check_limits(user, team_id=conversation.team_id,
                                       prompt_chars=prompt_chars)
    except accounting.LimitExceeded as exc:
        raise ServiceError(exc.code, exc.message, exc.status) from None


def _existing_pair(conversation: Conversation, client_id: uuid.UUID,
                   user_message: Message | None = None) -> PostResult | None:
    if user_message is None:
        user_message = Message.objects.filter(conversation=conversation,
                                              client_id=client_id).first()
    if user_message is None:
        return None
    assistant = user_message.children.order_by("seq").first()
    if assistant is None:
        return None
    return PostResult(user_message, assistant, created=False)


# The reads of every message's transaction, compiled once (chatsite/compiled.py): they run
# under the write lock, where each millisecond of Python is one every other writer waits.
_LOCKED = Compiled(lambda pk: Conversation.objects.select_for_update().filter(pk=pk),
                   pk=Conversation._meta.get_field("id"))
_SENT = Compiled(
    lambda conversation, client_id: Message.objects.filter(conversation=conversation,
                                                           client_id=client_id),
    conversation=Message._meta.get_field("conversation"),
    client_id=Message._meta.get_field("client_id"))
_SENT_OR_LEAF = Compiled(
    lambda conversation, client_id, leaf: Message.objects.filter(conversation=conversation)
    .filter(Q(client_id=client_id) | Q(pk=leaf)),
    conversation=Message._meta.get_field("conversation"),
    client_id=Message._meta.get_field("client_id"), leaf=Message._meta.get_field("id"))


def _locked(conversation: Conversation) -> Conversation:
    """The conversation, locked until the transaction ends (PostgreSQL: its row; SQLite: the
    write lock, taken at BEGIN). The caller's object may be stale: this one is not."""
    locked = _LOCKED.first(pk=conversation.pk)
    if locked is None:
        raise Conversation.DoesNotExist
    return locked


def _sent_and_leaf(locked: Conversation, client_id: uuid.UUID) -> Message | None:
    """Under the conversation's lock, one read: a prompt already stored with this client_id
    (returned), and the active leaf (put on `locked`, for `_parent_for_new_prompt`).

    The leaf is read by a statement of its own after the lock, never joined into the locking
    one: on PostgreSQL a locking statement that waited re-reads the locked row, but not the rows
    joined to it, so a joined leaf could be the one from before the other writer committed."""
    sent = leaf = None
    rows = (_SENT_OR_LEAF.objects(conversation=locked.pk, client_id=client_id,
                                  leaf=locked.active_leaf_id)
            if locked.active_leaf_id else
            _SENT.objects(conversation=locked.pk, client_id=client_id))
    for row in rows:
        if row.client_id == client_id:
            sent = row
        if row.pk == locked.active_leaf_id:
            leaf = row
    locked.active_leaf = leaf
    return sent


def _checked_prompt(user: Any, conversation: Conversation, text: str,
                    attachment_ids: list[uuid.UUID] | None) -> tuple[str, ModelConfig]:
    """The prompt's text and the model that answers it, or the ServiceError refusing them
    (before any lock is taken: these need no lock)."""
    text = text.strip() if attachment_ids and not text.strip() else _validate_text(text)
    drain.check_not_draining()
    model = _check_model(user, conversation.model)
    check_prompt(model, conversation.system_prompt, text)
    return text, model


def message_post(user: Any, conversation: Conversation, *, text: str, client_id: uuid.UUID,
                 edit_of: Message | None = None,
                 attachment_ids: list[uuid.UUID] | None = None,
                 document_ids: list[uuid.UUID] | None = None) -> PostResult:
    """Store a user message and a queued answer. A repeated client_id returns the first pair.

    `edit_of` is an earlier user message being edited: the new one becomes its sibling (a
    new branch); nothing is deleted.

    One transaction of few statements (docs/performance.md, "the write path"): the locked
    conversation, the user lock, the idempotency check with the leaf (one read), the limits
    (two reads), one insert of both messages, the ledger row, one update of the conversation.
    """
    try:
        text, model = _checked_prompt(user, conversation, text, attachment_ids)
    except ServiceError:
        # A repeated client_id gets the first pair whatever changed since (F10).
        existing = _existing_pair(conversation, client_id)
        if existing:
            return existing
        raise
    try:
        with transaction.atomic():
            # Locks in one order everywhere (the conversation, then the user), so that two
            # people writing into one conversation cannot deadlock.
            locked = _locked(conversation)
            # One step per user: the limits and the ledger row they guard (T22).
            accounting.lock_user(user)
            # A repeated client_id gets the first pair, even while that answer is running (F10):
            # idempotency is checked before "busy" and before the limits.
            sent = _sent_and_leaf(locked, client_id)
            if sent is not None:
                existing = _existing_pair(locked, client_id, sent)
                if existing:
                    return existing
            warnings = _check_limits(user, locked, len(text))
            parent = _parent_for_new_prompt(locked, edit_of)
            user_message, assistant = _store_pair(user, locked, parent, client_id, text, model)
            images = attach(user, user_message, attachment_ids or [], model)
            documents = attach_documents(user, user_message, document_ids or [])
            if not images and not documents:
                _known_without_files(user_message)
            accounting.record_start(user, model, team_id=locked.team_id, message=assistant)
            _advance(locked, assistant, 2, title_from=text)
            _start_on_commit(locked, user_message, assistant)
    except IntegrityError:
        # Two requests with one client_id raced: the other one won; return its pair.
        existing = _existing_pair(conversation, client_id)
        if existing:
            return existing
        raise
    _copy_written(locked, conversation)
    return PostResult(user_message, assistant, created=True, warnings=warnings)


def _known_without_files(prompt: Message) -> None:
    """A prompt stored with no image and no document says so, as a prefetch of nothing would:
    the reply's rendering of it then reads neither (issue 16)."""
    prompt._prefetched_objects_cache = {  # type: ignore[attr-defined]  # Django's own cache
        "attachments": Attachment.objects.none(), "documents": Document.objects.none()}


def _store_pair(user: Any, locked: Conversation, parent: Message | None, client_id: uuid.UUID,
                text: str, model: ModelConfig) -> tuple[Message, Message]:
    """The prompt and its queued answer, as one insert. Their seqs come from the locked row
    (written back by `_advance` in the same transaction): no separate counter statement."""
    seq = locked.next_seq
    user_message = Message(
        conversation=locked, parent=parent, seq=seq, role=Message.Role.USER,
        author=user, client_id=client_id, content=text, status=MessageStatus.COMPLETE)
    assistant = Message(
        conversation=locked, parent=user_message, seq=seq + 1,
        role=Message.Role.ASSISTANT, model=model, status=MessageStatus.QUEUED)
    jobs.claim_at_insert(assistant)
    Message.objects.bulk_create([user_message, assistant])
    return user_message, assistant


def _advance(locked: Conversation, leaf: Message, used_seqs: int, title_from: str = "") -> None:
    """One update of the locked conversation: the seqs used, the new leaf, a first title."""
    locked.next_seq += used_seqs
    locked.active_leaf = leaf
    update = ["next_seq", "active_leaf", "updated_at"]
    if title_from and locked.title_is_auto and not locked.title:
        locked.title = auto_title(title_from)
        update.append("title")
    locked.save(update_fields=update)


def _copy_written(locked: Conversation, conversation: Conversation) -> None:
    """The caller's conversation object as the transaction left it (no re-read)."""
    for name in ("next_seq", "active_leaf_id", "title", "title_is_auto", "updated_at"):
        setattr(conversation, name, getattr(locked, name))
    conversation.active_leaf = locked.active_leaf


def _start_on_commit(conversation: Conversation, user_message: Message | None,
                     assistant: Message) -> None:
    """After commit: start the answer, then tell the other viewers the thread grew."""
    event = events.new_pair(assistant.seq, assistant.pk,
                            user_message.seq if user_message else None,
                            user_message.pk if user_message else None)
    group = events.conversation_group(conversation.pk)

    def after() -> None:
        jobs.start(assistant)
        events.publish_sync(group, event)

    transaction.on_commit(after)


def _parent_for_new_prompt(conversation: Conversation, edit_of: Message | None) -> Message | None:
    if edit_of is not None:
        if edit_of.conversation_id != conversation.pk or edit_of.role != Message.Role.USER:
            raise ServiceError("bad_edit", _("Only your own prompts can be edited."))
        return edit_of.parent
    leaf = conversation.active_leaf
    if leaf is not None and leaf.status in ACTIVE_STATUSES:
        raise ServiceError("busy", _("An answer is still being written. Stop it or wait."),
                           409)
    return leaf


def regenerate(user: Any, conversation: Conversation, assistant: Message) -> Message:
    """A new attempt for an answer: a sibling under the same prompt. Nothing is deleted."""
    if assistant.role != Message.Role.ASSISTANT or assistant.parent_id is None:
        raise ServiceError("bad_target", _("Only answers can be regenerated."))
    assistant.refresh_from_db(fields=["status"])
    if assistant.status in ACTIVE_STATUSES:
        raise ServiceError("busy", _("This answer is still being written."), 409)
    drain.check_not_draining()
    model = _check_model(user, conversation.model)
    with transaction.atomic():
        locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
        accounting.lock_user(user)  # the limits and the ledger row as one step (T22)
        _check_limits(user, conversation, 0)
        busy = Message.objects.filter(conversation=locked, parent_id=assistant.parent_id,
                                      status__in=ACTIVE_STATUSES).exists()
        if busy:
            raise ServiceError("busy", _("Another attempt is still being written."), 409)
        attempt = Message(
            conversation=locked, parent_id=assistant.parent_id, seq=locked.next_seq,
            role=Message.Role.ASSISTANT, model=model, status=MessageStatus.QUEUED)
        jobs.claim_at_insert(attempt)
        attempt.save(force_insert=True)
        accounting.record_start(user, model, team_id=locked.team_id, message=attempt)
        _advance(locked, attempt, 1)
        _start_on_commit(locked, None, attempt)
    return attempt


def switch_branch(conversation: Conversation, message: Message) -> Message:
    leaf_id = latest_leaf_under(conversation, message.id)
    Conversation.objects.filter(pk=conversation.pk).update(active_leaf_id=leaf_id)
    conversation.active_leaf_id = leaf_id
    return Message.objects.get(pk=leaf_id)


def generation_stop(message: Message) -> bool:
    """Ask the runner to stop; returns False when the answer had already ended."""
    updated = Message.objects.filter(pk=message.pk, status__in=ACTIVE_STATUSES).update(
        stop_requested=True)
    if updated:
        transaction.on_commit(lambda: events.publish_sync(
            events.generation_group(message.pk), events.stop()))
    return bool(updated)


# Atomic: the events it registers with on_commit go out after the row is saved, and not at all
# when a later value is refused (outside a transaction on_commit runs at once).
@transaction.atomic
def conversation_update(user: Any, conversation: Conversation, *, title: str | None = None,
                        pinned: bool | None = None, archived: bool | None = None,
                        model: ModelConfig | None = None, system_prompt: str | None = None,
                        params: dict[str, Any] | None = None,
                        team_id: int | str | None = "unchanged") -> Conversation:
    fields: list[str] = []
    if team_id != "unchanged":
        if team_id is not None and not conversation.owner.groups.filter(pk=team_id).exists():
            raise ServiceError("bad_team", _("You can only share with a team you belong to."))
        if conversation.team_id is not None and conversation.team_id != team_id:
            # Made private or moved: the old team's open sockets lose it now, not at their next
            # periodic check (each socket re-checks its own access on this event).
            group = events.conversation_group(conversation.pk)
            revoked = events.revoked("access", conversation=conversation.pk)
            transaction.on_commit(lambda: events.publish_sync(group, revoked))
        conversation.team_id = team_id  # type: ignore[assignment]
        fields.append("team")
    if title is not None:
        title = " ".join(title.split())[:200]
        if not title:
            raise ServiceError("empty_title", _("A title cannot be empty."))
        conversation.title, conversation.title_is_auto = title, False
        fields += ["title", "title_is_auto"]
    if pinned is not None:
        conversation.pinned = pinned
        fields.append("pinned")
    if archived is not None:
        conversation.archived = archived
        fields.append("archived")
    if model is not None:
        conversation.model = _check_model(user, model)
        fields.append("model")
        if params is None:
            params = {k: v for k, v in conversation.params.items()
                      if k in conversation.model.param_specs()}
    if system_prompt is not None:
        conversation.system_prompt = system_prompt.strip()[:20_000]
        fields.append("system_prompt")
    if params is not None:
        conversation.params = clean_params(conversation.model, params)
        fields.append("params")
    if fields:
        conversation.save(update_fields=[*fields, "updated_at"])
        transaction.on_commit(lambda: events.publish_sync(
            events.conversation_group(conversation.pk),
            events.conversation_changed(conversation.display_title)))
    return conversation


def conversation_delete(conversation: Conversation) -> None:
    active = list(Message.objects.filter(conversation=conversation, status__in=ACTIVE_STATUSES)
                  .values_list("pk", flat=True))
    conversation_id = conversation.pk

    share_tokens = list(conversation.share_links.values_list("token", flat=True))

    def after() -> None:
        for message_id in active:
            events.publish_sync(events.generation_group(message_id), events.stop())
        for group in [events.conversation_group(conversation_id),
                      *(share_group(token) for token in share_tokens)]:
            events.publish_sync(group, events.revoked("deleted"))

    conversation.delete()
    transaction.on_commit(after)


def remember_default_model(user: Any, model: ModelConfig) -> None:
    """The model a user last picked becomes the one their next new chat starts with."""
    UserPreferences.objects.update_or_create(user=user, defaults={"default_model": model})


@dataclass
class SwitchResult:
    model: ModelConfig
    notes: list[str] = field(default_factory=list)  # what the next message should know


def switch_model(user: Any, conversation: Conversation, model: ModelConfig | None
                 ) -> SwitchResult:
    """The model for the next answer of this conversation (earlier answers keep theirs).

    Whoever may continue the conversation may switch (the caller checked Access.CONTINUE).
    A model the user may not use is refused and nothing changes. A model that needs an image
    is taken even when the branch holds none: the next message must bring one (said in the
    notes). A text model after images is taken too: the images stay in the thread and are sent
    to it as "[image]" markers (answers/history.py).
    """
    model = _check_model(user, model)
    with transaction.atomic():
        locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
        params = {k: v for k, v in locked.params.items() if k in model.param_specs()}
        locked.model, locked.params = model, params
        locked.save(update_fields=["model", "params", "updated_at"])
        remember_default_model(user, model)
        title = locked.display_title
        transaction.on_commit(lambda: events.publish_sync(
            events.conversation_group(locked.pk), events.conversation_changed(title)))
    conversation.model, conversation.params = model, params
    stored, _expired = images_in_branch(conversation.pk, conversation.active_leaf_id)
    has_images = stored or _expired
    notes: list[str] = []
    if model.requires_image and not stored:
        notes.append(_("%(model)s needs an image: attach one to your next message.")
                     % {"model": model.display_name})
    elif not model.vision and has_images:
        notes.append(_("%(model)s reads text only: the images in this conversation are sent "
                       "to it as “[image]”.") % {"model": model.display_name})
    return SwitchResult(model, notes)
