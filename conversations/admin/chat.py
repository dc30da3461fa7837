"""Conversations, read for support with their messages (every opening is audited)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from conversations import audit
from conversations.admin.base import AuditedAdmin
from conversations.models import (
    Conversation,
    Message,
)
from conversations.retention import services as retention


# --- conversations ----------------------------------------------------------------------------
class MessageInline(admin.TabularInline):
    model = Message
    fk_name = "conversation"
    fields = ("seq", "role", "author", "status", "model", "content", "created_at")
    readonly_fields = fields
    ordering = ("seq",)
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(AuditedAdmin):
    """Listed for oversight; opening one that is not yours is recorded in the audit log."""

    list_display = ("display_title", "owner", "team", "model", "archived", "legal_hold",
                    "updated_at")
    list_filter = ("archived", "legal_hold", "team", "model")
    actions = ["place_legal_hold", "lift_legal_hold"]
    search_fields = ("title", "owner__username")
    list_select_related = ("owner", "team", "model")
    fields = ("title", "owner", "team", "model", "system_prompt", "params", "pinned",
              "archived", "legal_hold", "created_at", "updated_at", "open_in_chat")
    readonly_fields = fields
    inlines = [MessageInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # read-only: conversations are changed by their owners only

    def get_actions(self, request: HttpRequest) -> Any:
        actions = super().get_actions(request)
        if not request.user.is_superuser:  # legal holds are the site admins' (retention)
            actions.pop("place_legal_hold", None)
            actions.pop("lift_legal_hold", None)
        return actions

    @admin.action(description=_("Place a legal hold (never deleted by the retention policy)"))
    def place_legal_hold(self, request: HttpRequest, queryset: Any) -> None:
        changed = retention.set_legal_hold(queryset.select_related("owner"), True,
                                           actor=request.user, request=request)
        self.message_user(request, _("%(n)d conversation(s) placed under legal hold.")
                          % {"n": changed})

    @admin.action(description=_("Lift the legal hold"))
    def lift_legal_hold(self, request: HttpRequest, queryset: Any) -> None:
        changed = retention.set_legal_hold(queryset.select_related("owner"), False,
                                           actor=request.user, request=request)
        self.message_user(request, _("Legal hold lifted on %(n)d conversation(s).")
                          % {"n": changed})

    @admin.display(description=_("title"), ordering="title")
    def display_title(self, obj: Conversation) -> str:
        return obj.display_title

    @admin.display(description=_("open"))
    def open_in_chat(self, obj: Conversation) -> str:
        return format_html('<a href="{}">{}</a>', reverse("conversation", args=[obj.pk]),
                           _("Open in the chat (read-only for admins, audited)"))

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> Any:
        response = super().change_view(request, object_id, form_url, extra_context)
        if request.method == "GET" and response.status_code == 200:
            conversation = self.get_object(request, unquote(object_id))
            if conversation is not None and conversation.owner_id != request.user.pk:
                audit.record(audit.ADMIN_OPENED_CONVERSATION, actor=request.user,
                             request=request, target=audit.target_of(conversation),
                             details={"owner": conversation.owner.get_username(),
                                      "via": "admin"})
        return response
