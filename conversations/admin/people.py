"""Users and teams (Django groups with their team settings)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext_lazy as _

from chatsite.models import ExternalIdentity
from conversations.admin.base import AuditedAdmin
from conversations.models import (
    TeamSettings,
)

User = get_user_model()


# --- users and teams --------------------------------------------------------------------------
ROLE_FIELDS = ("is_staff", "is_superuser", "groups", "user_permissions")

if admin.site.is_registered(User):
    admin.site.unregister(User)
if admin.site.is_registered(Group):
    admin.site.unregister(Group)


@admin.register(User)
class UserAdmin(AuditedAdmin, DjangoUserAdmin):
    list_display = ("username", "email", "first_name", "last_name", "is_active", "is_staff",
                    "is_superuser", "team_names", "last_login")
    list_filter = ("is_active", "is_staff", "is_superuser", "groups")
    actions = ["activate_users", "deactivate_users"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).prefetch_related("groups")

    def _role_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # Roles and membership are a superuser's to give: a staff member allowed to edit users
        # must not be able to raise anyone, themselves included (threat T17).
        readonly = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            readonly += [name for name in ROLE_FIELDS if name not in readonly]
        return readonly

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False  # else a staff member could take over a superuser's account
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_delete_permission(request, obj)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = list(super().get_fieldsets(request, obj))
        if obj is not None:
            fieldsets.append((_("Single sign-on"), {"fields": ("sso_identities",)}))
        return fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [*self._role_readonly_fields(request, obj), "sso_identities"]

    @admin.display(description=_("single sign-on identities"))
    def sso_identities(self, obj: Any) -> str:
        """Made at sign-in through the identity provider; shown, never edited here."""
        rows = ((identity.issuer, identity.subject, identity.email or "-")
                for identity in ExternalIdentity.objects.filter(user=obj).order_by("issuer"))
        return format_html_join(mark_safe("<br>"), "{} · {} · {}", rows) or "-"

    @admin.display(description=_("teams"))
    def team_names(self, obj: Any) -> str:
        return ", ".join(sorted(group.name for group in obj.groups.all())) or "-"

    @admin.action(description=_("Activate selected users"), permissions=["change"])
    def activate_users(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        changed = self._set_active(request, queryset, True)
        self.message_user(request, _("%(n)s user(s) activated.") % {"n": changed},
                          messages.SUCCESS)

    @admin.action(description=_("Deactivate selected users"), permissions=["change"])
    def deactivate_users(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        if queryset.filter(pk=request.user.pk).exists():
            self.message_user(request, _("You cannot deactivate your own account."),
                              messages.WARNING)
        changed = self._set_active(request, queryset.exclude(pk=request.user.pk), False)
        self.message_user(request, _("%(n)s user(s) deactivated; their open pages lose access "
                                     "at once.") % {"n": changed}, messages.SUCCESS)

    def _set_active(self, request: HttpRequest, queryset: QuerySet[Any], active: bool) -> int:
        changed = 0
        for user in queryset.filter(is_active=not active):
            if user.is_superuser and not request.user.is_superuser:
                continue
            user.is_active = active
            # save(), not update(): the audit and the socket push listen to post_save.
            user.save(update_fields=["is_active"])
            changed += 1
        return changed


class TeamSettingsInline(admin.StackedInline):
    model = TeamSettings
    can_delete = False
    max_num = 1
    extra = 1  # no row yet means the defaults; an untouched form saves none
    verbose_name_plural = _("team settings")


@admin.register(Group)
class TeamAdmin(AuditedAdmin, DjangoGroupAdmin):
    list_display = ("name", "member_count", "team_page")
    inlines = [TeamSettingsInline]
    readonly_fields = ("member_list",)
    fields = ("name", "member_list", "permissions")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Group]:
        return super().get_queryset(request).annotate(members=Count("user", distinct=True))

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        readonly = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            readonly.append("permissions")  # a team's permissions pass to all its members
        return readonly

    @admin.display(description=_("members"), ordering="members")
    def member_count(self, obj: Group) -> int:
        return getattr(obj, "members", 0)

    @admin.display(description=_("members"))
    def member_list(self, obj: Group) -> str:
        if obj.pk is None:
            return "-"
        members = obj.user_set.order_by("username")
        rows = ((reverse("admin:auth_user_change", args=[user.pk]), user.get_username())
                for user in members)
        links = format_html_join(", ", '<a href="{}">{}</a>', rows)
        hint = _("Add or remove members, managers and invitations on the team's page:")
        return format_html("{}<p class=\"help\">{} <a href=\"{}\">{}</a></p>", links or "-",
                           hint, reverse("team", args=[obj.pk]), obj.name)

    @admin.display(description=_("team page"))
    def team_page(self, obj: Group) -> str:
        return format_html('<a href="{}">{}</a>', reverse("team", args=[obj.pk]),
                           _("Members and invitations"))
