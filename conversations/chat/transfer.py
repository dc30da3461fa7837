"""Export a conversation (Markdown, JSON, a zip with its images) and import our own JSON."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from conversations import bounded_json
from conversations.chat import selectors
from conversations.documents import store as document_store
from conversations.errors import ServiceError
from conversations.images import attachments
from conversations.models import Attachment, Conversation, Document, Message, MessageStatus
from conversations.presets import services as preset_services
from providers.models import ModelConfig

FORMAT = "llamachat.conversation"
VERSION = 1
MAX_IMPORT_BYTES = 50 * 1024 * 1024
MAX_IMPORT_MESSAGES = 10_000


class ImportRefused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _image_name(attachment: Attachment) -> str:
    extension = "png" if attachment.mime_type == "image/png" else "jpg"
    return f"images/{attachment.pk}.{extension}"


def export_data(conversation: Conversation) -> dict[str, Any]:
    """Every message of every branch, in creation order, with the active branch's tip."""
    messages = (Message.objects.filter(conversation=conversation).order_by("seq")
                .select_related("author", "model").prefetch_related("attachments", "documents"))
    return {
        "format": FORMAT, "version": VERSION, "exported_at": timezone.now().isoformat(),
        "title": conversation.display_title, "model": conversation.model.slug,
        "system_prompt": conversation.system_prompt, "params": conversation.params,
        "preset": preset_services.export_of(conversation.preset),
        "created_at": conversation.created_at.isoformat(),
        "active_leaf": str(conversation.active_leaf_id) if conversation.active_leaf_id else None,
        "messages": [{
            "id": str(m.pk), "parent": str(m.parent_id) if m.parent_id else None,
            "role": m.role, "author": m.author.get_username() if m.author else None,
            "content": m.content, "status": m.status, "finish_reason": m.finish_reason,
            "error_code": m.error_code, "model": m.model.slug if m.model else None,
            "created_at": m.created_at.isoformat(),
            "usage": {"prompt_tokens": m.prompt_tokens,
                      "completion_tokens": m.completion_tokens},
            "images": [{"file": _image_name(a), "mime_type": a.mime_type, "width": a.width,
                        "height": a.height, "name": a.display_name}
                       for a in m.attachments.all() if not a.expired and a.file],
            "documents": [{"name": d.display_name, "mime_type": d.mime_type, "pages": d.pages,
                           "size": d.size, "sha256": d.sha256, "status": d.status,
                           "text": d.text} for d in m.documents.all()],
        } for m in messages],
    }


def export_markdown(conversation: Conversation) -> str:
    """The branch being viewed, as Markdown (model output is already Markdown)."""
    lines = [f"# {conversation.display_title}", ""]
    if conversation.preset is not None:
        lines += [f"> **Preset:** {conversation.preset}", ""]
    if conversation.system_prompt:
        lines += ["> **System prompt:** " + conversation.system_prompt.replace("\n", "\n> "), ""]
    for node in selectors.thread(conversation, limit=10**6).nodes:
        m = node.message
        who = (m.author.get_username() if m.author else "user") if m.role == "user" else (
            m.model.display_name if m.model else "assistant")
        lines += [f"## {who}", ""]
        lines += [f"![{a.display_name}]({_image_name(a)})" for a in m.attachments.all()
                  if not a.expired and a.file]
        for d in m.documents.all():  # the text, quoted: never rendered as Markdown
            lines += [f"**{d.display_name}**", "", *(f"    {line}" for line in
                                                     d.text.splitlines()), ""]
        lines += [m.content or "", ""]
        if m.status not in (MessageStatus.COMPLETE,):
            lines += [f"*({m.get_status_display()})*", ""]
    return "\n".join(lines)


def export_zip(conversation: Conversation) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("conversation.json", json.dumps(export_data(conversation),
                                                         ensure_ascii=False, indent=2))
        archive.writestr("conversation.md", export_markdown(conversation))
        for attachment in Attachment.objects.filter(conversation=conversation, expired=False):
            if attachment.file:
                archive.writestr(_image_name(attachment), attachments.read_bytes(attachment))
    return buffer.getvalue()


# --- import ---------------------------------------------------------------------------------
def _read_upload(raw: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    if len(raw) > MAX_IMPORT_BYTES:
        raise ImportRefused(_("This file is larger than 50 MB."))
    images: dict[str, bytes] = {}
    if raw[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(raw)) as archive:
                total = sum(info.file_size for info in archive.infolist())
                if total > 4 * MAX_IMPORT_BYTES:
                    raise ImportRefused(_("This archive unpacks to too much data."))
                body = archive.read("conversation.json")
                for info in archive.infolist():
                    if info.filename.startswith("images/") and not info.is_dir():
                        images[info.filename] = archive.read(info)
        except (zipfile.BadZipFile, KeyError):
            message = _("This is not an export of ours (no conversation.json).")
            raise ImportRefused(message) from None
    else:
        body = raw
    try:
        data = bounded_json.loads(body)
    except bounded_json.InvalidJson:
        raise ImportRefused(_("This file is not valid JSON (or it is nested too deeply).")) \
            from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != 1:
        raise ImportRefused(_("This is not a conversation exported from this product."))
    return data, images


def _text(value: Any, limit: int = 200_000) -> str:
    return value[:limit] if isinstance(value, str) else ""


@transaction.atomic
def import_conversation(user: Any, raw: bytes) -> Conversation:
    """A new conversation owned by `user`; authors are kept only as text in nothing (the
    importer becomes the author of every prompt). Images go through the one validator."""
    data, images = _read_upload(raw)
    rows = data.get("messages")
    if not isinstance(rows, list) or len(rows) > MAX_IMPORT_MESSAGES:
        raise ImportRefused(_("The message list is missing or too long."))
    visible = ModelConfig.objects.visible_to(user)
    model = visible.filter(slug=data.get("model")).first() or visible.first()
    if model is None:
        raise ImportRefused(_("No model is available to you to attach this conversation to."))
    conversation = Conversation.objects.create(
        owner=user, model=model, title=_text(data.get("title"), 200),
        title_is_auto=False, system_prompt=_text(data.get("system_prompt"), 20_000),
        params={}, imported=True)
    # The preset it was started from: the importer's visible one of that slug, or their own
    # with the same content, or a new personal preset with the exported content.
    try:
        preset = preset_services.find_or_recreate(user, data.get("preset"), model)
    except ServiceError as exc:
        raise ImportRefused(exc.message) from None
    if preset is not None:
        conversation.preset = preset
        conversation.save(update_fields=["preset"])
    ids: dict[str, Message] = {}
    seq = 0
    for row in rows:
        if not isinstance(row, dict) or row.get("role") not in ("user", "assistant"):
            raise ImportRefused(_("A message has no valid role."))
        parent_ref = row.get("parent")
        parent = ids.get(parent_ref) if isinstance(parent_ref, str) else None
        if row.get("parent") and parent is None:
            raise ImportRefused(_("A message refers to a parent that comes later or not at "
                                  "all."))
        seq += 1
        raw_status = row.get("status")
        status = raw_status if isinstance(raw_status, str) and raw_status in MessageStatus.values \
            else MessageStatus.COMPLETE
        if status in ("queued", "streaming"):
            status = MessageStatus.INTERRUPTED
        message = Message.objects.create(
            conversation=conversation, parent=parent, seq=seq, role=row["role"],
            author=user if row["role"] == "user" else None, content=_text(row.get("content")),
            status=status, finish_reason=_text(row.get("finish_reason"), 40),
            model=visible.filter(slug=row.get("model")).first() if row["role"] == "assistant"
            else None)
        ids[str(row.get("id"))] = message
        _import_images(user, message, row.get("images"), images)
        _import_documents(user, message, row.get("documents"))
    leaf = ids.get(str(data.get("active_leaf"))) or (list(ids.values())[-1] if ids else None)
    conversation.active_leaf = leaf
    conversation.next_seq = seq + 1
    conversation.save(update_fields=["active_leaf", "next_seq"])
    return conversation


def _import_documents(user: Any, message: Message, specs: Any) -> None:
    """Documents come back as their exported text, checked like an upload (a PDF's pages are
    not kept: the text is one document)."""
    if not isinstance(specs, list):
        return
    for spec in specs[:20]:
        text = spec.get("text") if isinstance(spec, dict) else None
        if not isinstance(text, str) or not text.strip():
            continue
        upload = SimpleUploadedFile(_text(spec.get("name"), 160) or "document.txt",
                                    text.encode("utf-8"))
        try:
            document = document_store.document_create(user, upload)
        except document_store.DocumentRefused as exc:
            raise ImportRefused(exc.message) from None
        Document.objects.filter(pk=document.pk).update(message=message,
                                                       conversation=message.conversation)


def _import_images(user: Any, message: Message, specs: Any, images: dict[str, bytes]) -> None:
    if not isinstance(specs, list):
        return
    for spec in specs[:10]:
        name = spec.get("file") if isinstance(spec, dict) else None
        if not isinstance(name, str) or name not in images:
            continue
        upload = SimpleUploadedFile(_text(spec.get("name"), 200) or "image", images[name])
        try:
            attachment = attachments.attachment_create(user, upload)
        except attachments.UploadRefused as exc:
            raise ImportRefused(exc.message) from None
        Attachment.objects.filter(pk=attachment.pk).update(
            message=message, conversation=message.conversation)
