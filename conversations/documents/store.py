"""Documents: upload (through the one validator), extraction in the background, attaching to a
prompt. The text is extracted once and kept on the row, cut into passages (DocumentPassage)."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from conversations import runtime
from conversations.documents import validator
from conversations.errors import ServiceError
from conversations.models import Document, DocumentPassage, Message

log = logging.getLogger(__name__)


class DocumentRefused(ServiceError):
    """An upload the validator refused; nothing was stored."""


def limits() -> validator.Limits:
    return validator.Limits(max_bytes=settings.DOCUMENT_MAX_BYTES,
                            max_pages=settings.DOCUMENT_MAX_PAGES)


def refusal_message(code: str) -> str:
    """The refusal in the reader's language (the validator's own text is English only)."""
    messages = {
        "too_large": _("This document is larger than %(mb).0f MB.")
        % {"mb": limits().max_bytes / 1_048_576},
        "too_many_pages": _("This PDF has more than %(n)s pages.") % {"n": limits().max_pages},
        "empty": _("This document is empty."),
        "encrypted": _("This PDF is encrypted; remove the password and upload it again."),
        "macros": _("Documents with macros (.docm) are not accepted."),
        "no_text": _("This PDF has no text layer (a scan?); nothing can be read from it."),
        "unreadable": _("This document cannot be read."),
    }
    return messages.get(code, _("Only text, Markdown, CSV, source code, PDF and DOCX documents "
                                "can be attached."))


def document_create(user: Any, upload: UploadedFile) -> Document:
    """Check and store one uploaded document; its text is extracted in the background."""
    cap = limits().max_bytes
    if upload.size is not None and upload.size > cap:
        raise DocumentRefused("too_large", refusal_message("too_large"))
    data = upload.read(cap + 1)
    name = validator.display_name(upload.name or "")
    try:
        checked = validator.check(data, name, limits())
    except validator.DocumentRejected as exc:
        raise DocumentRefused(exc.code, refusal_message(exc.code)) from None
    digest = hashlib.sha256(data).hexdigest()
    stored = default_storage.save(f"documents/{digest[:2]}/{uuid.uuid4().hex}.bin",
                                  ContentFile(data))
    document = Document.objects.create(
        owner=user, file=stored, display_name=name, mime_type=checked.mime_type,
        size=len(data), sha256=digest, pages=checked.pages)
    transaction.on_commit(lambda: schedule_extraction(document.pk))
    transaction.on_commit(remove_forgotten)
    return document


def remove_forgotten(now: Any = None, batch: int = 100) -> int:
    """Delete documents uploaded but never sent, after UPLOAD_GRACE_HOURS (their files go with
    them: the post_delete receiver). Runs after each upload, so no scheduler is needed."""
    cutoff = (now or timezone.now()) - timedelta(hours=settings.UPLOAD_GRACE_HOURS)
    ids = list(Document.objects.filter(message__isnull=True, created_at__lt=cutoff)
               .values_list("pk", flat=True)[:batch])
    if not ids:
        return 0
    _total, per_model = Document.objects.filter(pk__in=ids, message__isnull=True).delete()
    return int(per_model.get("conversations.Document", 0))


def schedule_extraction(document_id: uuid.UUID) -> None:
    """Extract in a Celery worker when Redis is configured, else on the server's loop."""
    if settings.REDIS_URL:
        current_app.send_task("conversations.extract_document", args=[str(document_id)])
        return
    runtime.submit(runtime.off_loop(extract), str(document_id))


def extract(document_id: str) -> str:
    """Extract the text of a pending document once; idempotent (a ready one is left alone)."""
    document = Document.objects.filter(pk=document_id, status=Document.Status.PENDING).first()
    if document is None:
        return "skipped"
    try:
        with default_storage.open(str(document.file.name), "rb") as handle:
            data = bytes(handle.read())
        pages = validator.extract(data, document.mime_type, limits())
    except validator.DocumentRejected as exc:
        Document.objects.filter(pk=document.pk).update(status=Document.Status.FAILED,
                                                       error_code=exc.code)
        return exc.code
    except OSError:
        Document.objects.filter(pk=document.pk).update(status=Document.Status.FAILED,
                                                       error_code="missing")
        return "missing"
    paged = document.mime_type == validator.PDF
    passages = validator.split_passages(pages, paged=paged)
    text = "\n\n".join(p for p in pages if p.strip())
    with transaction.atomic():
        if not Document.objects.select_for_update().filter(
                pk=document.pk, status=Document.Status.PENDING).exists():
            return "skipped"
        DocumentPassage.objects.filter(document=document).delete()
        DocumentPassage.objects.bulk_create(
            DocumentPassage(document=document, seq=index, page=page, text=body)
            for index, (page, body) in enumerate(passages))
        Document.objects.filter(pk=document.pk).update(
            status=Document.Status.READY, text=text, chars=len(text),
            pages=len(pages) if paged else None)
    return "ready"


def attach_documents(user: Any, message: Message, document_ids: Iterable[uuid.UUID]) -> int:
    """Attach the user's own, not yet sent documents to a new prompt (inside its transaction)."""
    ids = list(dict.fromkeys(document_ids))
    if not ids:
        return 0
    rows = Document.objects.select_for_update().filter(pk__in=ids, owner=user,
                                                       message__isnull=True)
    if rows.count() != len(ids):
        raise ServiceError("bad_document", _("One of the documents is not available. Upload it "
                                             "again."))
    return Document.objects.filter(pk__in=ids).update(message=message,
                                                      conversation=message.conversation)


def unsent_documents_of(user: Any) -> Any:
    return Document.objects.filter(owner_id=getattr(user, "pk", None), message__isnull=True)


def read_bytes(document: Document) -> bytes:
    with default_storage.open(str(document.file.name), "rb") as handle:
        return bytes(handle.read())
