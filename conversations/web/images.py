"""Image endpoints: the composer's uploads, and serving stored images to those who may see them.

Every image goes through the one validator on upload (images/validator.py) and is served with
headers that keep a browser from treating it as anything but an image (T03).
"""

from __future__ import annotations

import uuid

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from conversations.access import get_attachment_for, unsent_uploads_of
from conversations.images import attachments
from conversations.models import Attachment


@login_required
@require_POST
def upload_image(request: HttpRequest) -> HttpResponse:
    """Validate and store one image for the composer; it is attached when the prompt is sent."""
    upload = request.FILES.get("image")
    if upload is None:
        return JsonResponse({"error": {"code": "no_file", "message": _("Choose an image.")}},
                            status=400)
    try:
        attachment = attachments.attachment_create(request.user, upload)
    except attachments.UploadRefused as exc:
        return JsonResponse({"error": {"code": exc.code, "message": exc.message}}, status=400)
    return JsonResponse({"id": str(attachment.pk), "name": attachment.display_name,
                         "width": attachment.width, "height": attachment.height,
                         "url": reverse("image", args=[attachment.pk])}, status=201)


@login_required
@require_POST
def upload_discard(request: HttpRequest, attachment_id: uuid.UUID) -> HttpResponse:
    deleted, _rows = unsent_uploads_of(request.user).filter(pk=attachment_id).delete()
    if not deleted:
        raise Http404
    return JsonResponse({"deleted": True})


def image_response(attachment: Attachment, max_side: int | None = None) -> HttpResponse:
    if attachment.expired or not attachment.file:
        return HttpResponse(_("This image has expired."), status=410,
                            content_type="text/plain; charset=utf-8")
    try:
        data = attachments.read_bytes(attachment)
    except OSError:
        raise Http404 from None
    mime_type = attachment.mime_type
    if max_side and max(attachment.width, attachment.height) > max_side:
        fitted = attachments.fit(attachment, data, max_side=max_side)
        data, mime_type = fitted.data, fitted.mime_type
    # Our own re-encoded PNG/JPEG: the type is fixed by us, never by the uploader (T03).
    response = HttpResponse(data, content_type=mime_type)
    response["X-Content-Type-Options"] = "nosniff"
    extension = "png" if mime_type == "image/png" else "jpg"
    response["Content-Disposition"] = f'inline; filename="image.{extension}"'
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["Cache-Control"] = "private, max-age=3600"
    return response


@login_required
@require_GET
def image(request: HttpRequest, attachment_id: uuid.UUID) -> HttpResponse:
    """An image, for whoever can read the conversation it belongs to (or its uploader)."""
    return image_response(get_attachment_for(request.user, attachment_id))


@require_GET
def signed_image(request: HttpRequest, image_id: str) -> HttpResponse:
    """An image at a signed, expiring URL, without a session: what DashScope fetches."""
    exp, sig = request.GET.get("exp", ""), request.GET.get("sig", "")
    if not attachments.signature_valid(image_id, exp, sig):
        raise Http404
    try:
        attachment_id, max_side = attachments.parse_signed_id(image_id)
        attachment = Attachment.objects.get(pk=attachment_id)
    except (ValueError, Attachment.DoesNotExist):
        raise Http404 from None
    return image_response(attachment, max_side=max_side)
