"""Moving conversations out of and into the product: export (Markdown, JSON, zip) and import."""

from __future__ import annotations

import json
import uuid

from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils.text import slugify
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from conversations.access import Access, get_conversation_for
from conversations.chat import transfer


@login_required
@require_GET
def export_conversation(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    """?format=md, json or zip (JSON + Markdown + images). Whoever can read may export."""
    conversation = get_conversation_for(request.user, conversation_id, Access.READ)
    fmt = request.GET.get("format", "zip")
    stem = slugify(conversation.display_title)[:60] or "conversation"
    if fmt == "md":
        response = HttpResponse(transfer.export_markdown(conversation),
                                content_type="text/markdown; charset=utf-8")
        name = f"{stem}.md"
    elif fmt == "json":
        response = HttpResponse(json.dumps(transfer.export_data(conversation),
                                           ensure_ascii=False, indent=2),
                                content_type="application/json; charset=utf-8")
        name = f"{stem}.json"
    elif fmt == "zip":
        response = HttpResponse(transfer.export_zip(conversation),
                                content_type="application/zip")
        name = f"{stem}.zip"
    else:
        raise Http404
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["X-Content-Type-Options"] = "nosniff"
    return response


@login_required
@require_POST
def import_conversation(request: HttpRequest) -> HttpResponse:
    upload = request.FILES.get("file")
    if upload is None:
        flash.error(request, _("Choose a file exported from this product (.json or .zip)."))
        return redirect("home")
    try:
        conversation = transfer.import_conversation(request.user, upload.read(
            transfer.MAX_IMPORT_BYTES + 1))
    except transfer.ImportRefused as exc:
        flash.error(request, exc.message)
        return redirect("home")
    flash.success(request, _("Conversation imported."))
    return redirect("conversation", conversation_id=conversation.pk)
