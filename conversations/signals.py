"""Push access changes to open sockets at once (threat T18), instead of waiting for a poll."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from conversations import events
from conversations.images.attachments import delete_files_after_commit
from conversations.models import Attachment

User = get_user_model()


def _tell_sockets(user_ids: list[Any]) -> None:
    def send() -> None:
        for user_id in user_ids:
            events.publish_sync(events.user_group(user_id),
                                events.revoked("access"))

    transaction.on_commit(send)


@receiver(m2m_changed, sender=User.groups.through)
def membership_changed(sender: Any, instance: Any, action: str, reverse: bool,
                       pk_set: set[Any] | None, **kwargs: Any) -> None:
    if not reverse and action in {"post_remove", "post_clear"}:  # user.groups.remove(...)
        _tell_sockets([instance.pk])
    elif reverse and action == "post_remove":  # group.user_set.remove(...)
        _tell_sockets(list(pk_set or []))
    elif reverse and action == "pre_clear":  # group.user_set.clear(): members still listed
        _tell_sockets(list(instance.user_set.values_list("pk", flat=True)))


@receiver(post_save, sender=User)
def user_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    if not created and not instance.is_active:
        _tell_sockets([instance.pk])


def _attachment_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    if instance.file:
        delete_files_after_commit([instance.file.name])


def connect_attachment_signals() -> None:
    post_delete.connect(_attachment_deleted, sender=Attachment,
                        dispatch_uid="attachment-file-cleanup")


connect_attachment_signals()
