"""Push access changes to open sockets at once (threat T18), instead of waiting for a poll.

- Membership removed, a conversation moved out of a team: `revoked("access")`; each socket
  re-checks its access and closes with 4403 when it lost it.
- A session ended (logout, a password changed by the user or an admin, a deactivated account):
  `revoked("session")`; each of the user's sockets checks that the session it was opened with
  is still valid and closes with 4401 when not. Through the channel layer, on every process.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save
from django.dispatch import receiver

from chatsite.oidc.signals import sso_refused, sso_signed_in
from conversations import audit, events
from conversations.images.attachments import delete_files_after_commit
from conversations.models import Attachment, Document, TeamSettings

User = get_user_model()


def _tell_sockets(user_ids: list[Any], reason: str = "access") -> None:
    def send() -> None:
        for user_id in user_ids:
            events.publish_sync(events.user_group(user_id), events.revoked(reason))

    transaction.on_commit(send)


@receiver(user_logged_out)
def logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is not None and user.pk is not None:
        _tell_sockets([user.pk], "session")


@receiver(pre_save, sender=User)
def remember_password(sender: Any, instance: Any, update_fields: Any = None,
                      **kwargs: Any) -> None:
    """The stored password hash before a save that may change it."""
    if instance.pk is None or (update_fields is not None and "password" not in update_fields):
        return
    instance._password_before = User.objects.filter(pk=instance.pk).values_list(
        "password", flat=True).first()


@receiver(m2m_changed, sender=User.groups.through)
def membership_changed(sender: Any, instance: Any, action: str, reverse: bool,
                       pk_set: set[Any] | None, **kwargs: Any) -> None:
    if not reverse and action in {"post_remove", "post_clear"}:  # user.groups.remove(...)
        _tell_sockets([instance.pk])
    elif reverse and action == "post_remove":  # group.user_set.remove(...)
        _tell_sockets(list(pk_set or []))
    elif reverse and action == "pre_clear":  # group.user_set.clear(): members still listed
        _tell_sockets(list(instance.user_set.values_list("pk", flat=True)))


@receiver(m2m_changed, sender=User.groups.through)
def managers_follow_membership(sender: Any, instance: Any, action: str, reverse: bool,
                               pk_set: set[Any] | None, **kwargs: Any) -> None:
    """A team's managers stay a subset of its members, whatever removed someone (the team
    page, the admin, single sign-on's team sync)."""
    rows = TeamSettings.managers.through.objects
    if action == "post_remove" and pk_set:
        if reverse:  # group.user_set.remove(...)
            rows.filter(teamsettings__team_id=instance.pk, user_id__in=pk_set).delete()
        else:  # user.groups.remove(...)
            rows.filter(teamsettings__team_id__in=pk_set, user_id=instance.pk).delete()
    elif action == "pre_clear":
        if reverse:
            rows.filter(teamsettings__team_id=instance.pk).delete()
        else:
            rows.filter(user_id=instance.pk).delete()


@receiver(post_save, sender=User)
def user_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    if created:
        return
    before = getattr(instance, "_password_before", None)
    if not instance.is_active or (before is not None and before != instance.password):
        _tell_sockets([instance.pk], "session")


def _attachment_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    if instance.file:
        delete_files_after_commit([instance.file.name])


def connect_attachment_signals() -> None:
    post_delete.connect(_attachment_deleted, sender=Attachment,
                        dispatch_uid="attachment-file-cleanup")
    post_delete.connect(_attachment_deleted, sender=Document,
                        dispatch_uid="document-file-cleanup")


connect_attachment_signals()


# Single sign-on (chatsite/oidc/, which may not import conversations): each sign-in and refusal.
@receiver(sso_signed_in, dispatch_uid="audit-sso-signed-in")
def sso_signed_in_audited(sender: Any, request: Any, user: Any, details: Any,
                          **kwargs: Any) -> None:
    audit.record("sso.signed_in", actor=user, target=audit.target_of(user), details=details,
                 request=request)


@receiver(sso_refused, dispatch_uid="audit-sso-refused")
def sso_refused_audited(sender: Any, request: Any, reason: str, details: Any,
                        **kwargs: Any) -> None:
    audit.record("sso.refused", details={"reason": reason, **details}, request=request)
