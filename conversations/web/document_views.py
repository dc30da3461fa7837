"""Document endpoints: the composer's uploads, and the stored file for those who may read it.

A document is never shown inline: the file is served as a download (octet-stream, nosniff,
sandboxed), so nothing in it can run in the browser.
"""

from __future__ import annotations

import uuid

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from conversations.access import get_document_for
from conversations.documents import store
from conversations.errors import ServiceError
from conversations.models import Document


def document_ids(request: HttpRequest) -> list[uuid.UUID]:
    """The composer's `documents` fields (ids of unsent uploads)."""
    ids = []
    for raw in request.POST.getlist("documents")[:20]:
        try:
            ids.append(uuid.UUID(raw))
        except ValueError:
            raise ServiceError("bad_document",
                               _("One of the documents is not available.")) from None
    return ids


def describe(document: Document) -> dict[str, object]:
    return {"id": str(document.pk), "name": document.display_name, "pages": document.pages,
            "size": document.size, "status": document.status,
            "status_label": str(document.get_status_display()),
            "error": store.refusal_message(document.error_code) if document.error_code else ""}


@login_required
@require_POST
def upload_document(request: HttpRequest) -> HttpResponse:
    """Check and store one document for the composer; attached when the prompt is sent."""
    upload = request.FILES.get("document")
    if upload is None:
        return JsonResponse({"error": {"code": "no_file", "message": _("Choose a document.")}},
                            status=400)
    try:
        document = store.document_create(request.user, upload)
    except store.DocumentRefused as exc:
        return JsonResponse({"error": {"code": exc.code, "message": exc.message}}, status=400)
    document.refresh_from_db()
    return JsonResponse(describe(document), status=201)


@login_required
@require_POST
def document_discard(request: HttpRequest, document_id: uuid.UUID) -> HttpResponse:
    deleted, _rows = store.unsent_documents_of(request.user).filter(pk=document_id).delete()
    if not deleted:
        raise Http404
    return JsonResponse({"deleted": True})


@login_required
@require_GET
def document_status(request: HttpRequest, document_id: uuid.UUID) -> HttpResponse:
    return JsonResponse(describe(get_document_for(request.user, document_id)))


def document_response(document: Document) -> HttpResponse:
    if not document.file:
        raise Http404
    try:
        data = store.read_bytes(document)
    except OSError:
        raise Http404 from None
    # Always a download of opaque bytes: never rendered, never sniffed, never run (T03).
    response = HttpResponse(data, content_type="application/octet-stream")
    response["X-Content-Type-Options"] = "nosniff"
    ascii_name = "".join(c if (c.isascii() and c.isalnum()) or c in "._-" else "_"
                         for c in document.display_name) or "document"
    response["Content-Disposition"] = f'attachment; filename="{ascii_name}"'
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["Cache-Control"] = "private, max-age=3600"
    return response


@login_required
@require_GET
def document_file(request: HttpRequest, document_id: uuid.UUID) -> HttpResponse:
    """The stored file, for whoever can read the conversation it belongs to (or its uploader)."""
    return document_response(get_document_for(request.user, document_id))
