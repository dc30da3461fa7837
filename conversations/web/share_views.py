"""Share links: the read-only page for whoever holds one; creating and revoking links."""

from __future__ import annotations

import uuid

from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from conversations.access import Access, get_conversation_for
from conversations.chat import selectors
from conversations.errors import ServiceError
from conversations.models import Attachment, Message, ShareLink
from conversations.sharing import links
from conversations.web.images import image_response


def _share_or_404(request: HttpRequest, token: str) -> ShareLink | HttpResponse:
    share = links.get_valid_share(token)
    if share is None:
        raise Http404
    if not links.share_readable_by(share, request.user):
        return redirect_to_login(request.get_full_path())
    return share


def _upto(share: ShareLink) -> int | None:
    return None if share.live else share.upto_seq


@require_GET
def share_page(request: HttpRequest, token: str) -> HttpResponse:
    share = _share_or_404(request, token)
    if isinstance(share, HttpResponse):
        return share
    conversation = share.conversation
    return render(request, "conversations/share.html", {
        "share": share, "conversation": conversation,
        "thread": selectors.thread(conversation, upto_seq=_upto(share)),
        "can_continue": False})


@require_GET
def share_thread(request: HttpRequest, token: str) -> HttpResponse:
    share = _share_or_404(request, token)
    if isinstance(share, HttpResponse):
        return share
    before = request.GET.get("before")
    try:
        before_seq = int(before) if before else None
    except ValueError:
        raise Http404 from None
    return render(request, "conversations/_thread.html", {
        "conversation": share.conversation, "share": share, "can_continue": False,
        "fragment": True, "thread": selectors.thread(share.conversation, before_seq=before_seq,
                                                     upto_seq=_upto(share))})


@require_GET
def share_message(request: HttpRequest, token: str, message_id: uuid.UUID) -> HttpResponse:
    share = _share_or_404(request, token)
    if isinstance(share, HttpResponse):
        return share
    message = Message.objects.filter(pk=message_id, conversation=share.conversation).first()
    if message is None or (not share.live and message.seq > share.upto_seq):
        raise Http404
    return render(request, "conversations/_message.html", {
        "conversation": share.conversation, "share": share, "can_continue": False,
        "node": selectors.node_for(message)})


@require_GET
def share_image(request: HttpRequest, token: str, attachment_id: uuid.UUID) -> HttpResponse:
    """Images of the shared conversation only, and only those the link shows (T07)."""
    share = _share_or_404(request, token)
    if isinstance(share, HttpResponse):
        return share
    attachment = Attachment.objects.select_related("message").filter(
        pk=attachment_id, conversation=share.conversation).first()
    if attachment is None or attachment.message is None or (
            not share.live and attachment.message.seq > share.upto_seq):
        raise Http404
    return image_response(attachment)


@login_required
@require_POST
def share_create(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = get_conversation_for(request.user, conversation_id, Access.MANAGE)
    days_raw = request.POST.get("expires_in_days", "").strip()
    try:
        days = int(days_raw) if days_raw else None
        share = links.create_share(request.user, conversation,
                                     live=request.POST.get("live") == "1",
                                     anonymous=request.POST.get("anonymous") == "1",
                                     expires_in_days=days)
    except ValueError:
        flash.error(request, _("Expiry must be a number of days."))
    except ServiceError as exc:
        flash.error(request, exc.message)
    else:
        flash.success(request, _("Share link created: %(url)s") % {
            "url": request.build_absolute_uri(f"/s/{share.token}/")})
    return redirect("conversation_settings", conversation_id=conversation.pk)


@login_required
@require_POST
def share_revoke(request: HttpRequest, conversation_id: uuid.UUID, share_id: int) -> HttpResponse:
    conversation = get_conversation_for(request.user, conversation_id, Access.MANAGE)
    share = ShareLink.objects.filter(pk=share_id, conversation=conversation).first()
    if share is None:
        raise Http404
    links.revoke_share(share, request.user)
    flash.success(request, _("The link was revoked. Anyone who had it open has lost it."))
    return redirect("conversation_settings", conversation_id=conversation.pk)
