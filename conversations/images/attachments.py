"""Images: upload (through the one validator), attach, shape for providers, clean up."""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, BinaryIO, cast

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from conversations.errors import ServiceError
from conversations.images import validator
from conversations.images.rules import check_image_counts
from conversations.models import Attachment, Message
from conversations.tree import path_up_ids
from providers.base import ImagePart
from providers.models import ModelConfig

log = logging.getLogger(__name__)


class UploadRefused(ServiceError):
    """An upload the one validator refused (or too large to read); nothing was stored."""


def _limits() -> validator.ImageLimits:
    return validator.ImageLimits(max_bytes=settings.IMAGE_MAX_BYTES,
                              max_pixels=min(settings.IMAGE_MAX_PIXELS, 80_000_000))


def attachment_create(user: Any, upload: UploadedFile) -> Attachment:
    """Validate, re-encode and store one uploaded image. Nothing is stored on refusal."""
    if upload.size is not None and upload.size > settings.IMAGE_MAX_BYTES:
        raise UploadRefused("too_large", _("This file is %(mb).1f MB; the limit is %(limit).0f MB.")
                            % {"mb": upload.size / 1_048_576,
                               "limit": settings.IMAGE_MAX_BYTES / 1_048_576})
    try:
        clean = validator.validate_image(cast(BinaryIO, upload.file), _limits())
    except validator.ImageRejected as exc:
        raise UploadRefused(str(exc.code), exc.message) from None
    name = default_storage.save(validator.generated_name(clean), ContentFile(clean.data))
    return Attachment.objects.create(
        owner=user, file=name, mime_type=clean.mime_type, width=clean.width,
        height=clean.height, size=len(clean.data), sha256=clean.sha256,
        display_name=validator.display_name(upload.name or ""))


def images_in_branch(conversation_id: uuid.UUID, tip: uuid.UUID | None) -> tuple[bool, bool]:
    """(an image a model can still be sent, an image no longer stored) in the branch ending at
    `tip`."""
    if tip is None:
        return False, False
    ids = [mid for mid, _parent in path_up_ids(conversation_id, tip)]
    states = set(Attachment.objects.filter(message_id__in=ids).values_list("expired", flat=True))
    return False in states, True in states


def stored_image_in_branch(conversation_id: uuid.UUID, tip: uuid.UUID | None) -> bool:
    """Does the branch ending at `tip` still hold an image a model can be sent?"""
    return images_in_branch(conversation_id, tip)[0]


def attach(user: Any, message: Message, attachment_ids: Iterable[uuid.UUID],
           model: ModelConfig) -> list[Attachment]:
    """Attach the user's own, not yet sent uploads to a new prompt (inside its transaction)."""
    ids = list(dict.fromkeys(attachment_ids))
    stored, expired = (images_in_branch(message.conversation_id, message.parent_id)
                       if model.requires_image and not ids else (False, False))
    check_image_counts(model, [len(ids)], earlier_image=stored, expired_image=expired)
    if not ids:  # most prompts: no statement (building the empty queries costs ~1 ms)
        return []
    rows = list(Attachment.objects.select_for_update().filter(
        pk__in=ids, owner=user, message__isnull=True, expired=False))
    if len(rows) != len(ids):
        # Someone else's image, an already sent one, or a made-up id (threat T07).
        raise ServiceError("bad_attachment", _("One of the images is not available. Upload it "
                                               "again."))
    Attachment.objects.filter(pk__in=ids).update(message=message,
                                                 conversation=message.conversation)
    return rows


def read_bytes(attachment: Attachment) -> bytes:
    with default_storage.open(str(attachment.file.name), "rb") as handle:
        return bytes(handle.read())


def _signing_secret() -> bytes:
    return hashlib.sha256(b"image-url:" + settings.SECRET_KEY.encode()).digest()


def signed_url(attachment: Attachment, max_side: int | None = None) -> str:
    """A signed, expiring URL of the image; with `max_side` the server scales it down first
    (the size is part of the signed id, so it cannot be changed)."""
    image_id = str(attachment.pk) if not max_side else f"{attachment.pk}.s{int(max_side)}"
    return validator.sign_image_url(settings.SITE_URL, image_id, secret=_signing_secret(),
                                 ttl_seconds=settings.IMAGE_URL_TTL_SECONDS)


def parse_signed_id(image_id: str) -> tuple[uuid.UUID, int | None]:
    """(attachment id, max side) from a signed image id; ValueError when malformed."""
    raw, _sep, side = image_id.partition(".s")
    return uuid.UUID(raw), (int(side) if side else None)


def signature_valid(image_id: str, exp: str, sig: str) -> bool:
    return validator.verify_image_signature(image_id, exp, sig, secret=_signing_secret())


def fit(attachment: Attachment, data: bytes, *, max_side: int | None,
        max_pixels: int | None = None, max_bytes: int | None = None) -> validator.CleanImage:
    """The stored image scaled down (never up) to these limits."""
    clean = validator.CleanImage(data=data, mime_type=attachment.mime_type,
                              extension="png" if attachment.mime_type == "image/png" else "jpg",
                              width=attachment.width, height=attachment.height,
                              source_format="stored", sha256=attachment.sha256)
    return validator.resize_to_fit(clean, max_side=max_side, max_pixels=max_pixels,
                                max_bytes=max_bytes)


def image_part(attachment: Attachment, model: ModelConfig) -> ImagePart:
    """One stored image fitted to the model's limits, with the signed URL DashScope fetches
    (which serves the same scaled-down image)."""
    fitted = fit(attachment, read_bytes(attachment), max_side=model.max_image_side,
                 max_pixels=model.max_image_pixels, max_bytes=model.max_image_bytes)
    return ImagePart(data=fitted.data, mime_type=fitted.mime_type,
                     url=signed_url(attachment, model.max_image_side))


def fitted_part(attachment: Attachment, model: ModelConfig) -> ImagePart | None:
    """The stored image fitted to this model, or None when it cannot be sent any more.

    An image whose stored file is gone (a restore without media, a lost disk) is marked expired
    and left out, like one past retention: the thread then says "image expired" instead of
    showing a broken image, and the answer is still written. Raising here would leave the
    answer claimed but never run (this is called while the runner claims the job).
    """
    if attachment.expired:
        return None
    if not attachment.file:
        _mark_lost(attachment)
        return None
    try:
        return image_part(attachment, model)
    except FileNotFoundError:
        _mark_lost(attachment)
    except validator.ImageRejected:
        # Only when no size down to 1x1 meets the model's byte limit: a misconfigured model.
        log.warning("image %s cannot be fitted to %s; left out", attachment.pk, model.slug)
    return None


def _mark_lost(attachment: Attachment) -> None:
    log.warning("stored file of image %s is missing; marking it expired", attachment.pk)
    Attachment.objects.filter(pk=attachment.pk, expired=False).update(expired=True, file="")


# --- cleanup ----------------------------------------------------------------------------------
@dataclass
class CleanupReport:
    unattached: int = 0
    expired: int = 0
    orphan_files: int = 0

    def __str__(self) -> str:
        return (f"removed {self.unattached} unsent upload(s), expired {self.expired} image(s), "
                f"deleted {self.orphan_files} orphaned file(s)")


def _delete_file(name: str) -> None:
    if name:
        try:
            default_storage.delete(name)
        except OSError:
            log.warning("could not delete stored image %s", name)


def cleanup(now: Any = None) -> CleanupReport:
    """Remove what nobody can see any more. Safe to run twice at once.

    - uploads never attached to a sent message, after UPLOAD_GRACE_HOURS;
    - with IMAGE_RETENTION_DAYS set, files of older images (the message keeps an
      "image expired" placeholder);
    - files left behind by deleted conversations (rows deleted with them) are removed by the
      post_delete signal; this pass also deletes any stored file of ours (named like
      validator.generated_name) that no row refers to.
    """
    now = now or timezone.now()
    report = CleanupReport()
    grace = now - timedelta(hours=settings.UPLOAD_GRACE_HOURS)
    for attachment in Attachment.objects.filter(message__isnull=True, created_at__lt=grace):
        deleted, _rows = Attachment.objects.filter(pk=attachment.pk,
                                                   message__isnull=True).delete()
        if deleted:
            _delete_file(attachment.file.name or "")
            report.unattached += 1
    if settings.IMAGE_RETENTION_DAYS:
        cutoff = now - timedelta(days=settings.IMAGE_RETENTION_DAYS)
        for attachment in Attachment.objects.filter(created_at__lt=cutoff, expired=False,
                                                    message__isnull=False):
            if Attachment.objects.filter(pk=attachment.pk, expired=False).update(
                    expired=True, file=""):
                _delete_file(attachment.file.name or "")
                report.expired += 1
    report.orphan_files = _delete_orphans(now)
    return report


_HEX2 = re.compile(r"[0-9a-f]{2}")
_FILE = re.compile(r"[0-9a-f]{32}\.(?:png|jpg)")


def _listdir(path: str) -> tuple[list[str], list[str]]:
    try:
        folders, files = default_storage.listdir(path)
    except (FileNotFoundError, NotImplementedError, OSError):
        return [], []
    return list(folders), list(files)


def _stored_names() -> Iterable[str]:
    """Stored files shaped like validator.generated_name: 'ab/cd/abcd<28 hex>.png'.

    Only that layout is ours. MEDIA_ROOT may hold other things (an admin's logo.png, a
    bucket shared with another app), and nothing else may ever be taken for an orphan.
    """
    for top in _listdir("")[0]:
        if not _HEX2.fullmatch(top):
            continue
        for sub in _listdir(top)[0]:
            if not _HEX2.fullmatch(sub):
                continue
            for name in _listdir(f"{top}/{sub}")[1]:
                if _FILE.fullmatch(name) and name.startswith(top + sub):
                    yield f"{top}/{sub}/{name}"


def _delete_orphans(now: Any) -> int:
    known = set(Attachment.objects.exclude(file="").values_list("file", flat=True))
    recent = now - timedelta(minutes=10)  # a file saved just before its row is committed
    removed = 0
    for name in _stored_names():
        if name in known:
            continue
        try:
            modified = default_storage.get_modified_time(name)
        except (OSError, NotImplementedError):
            continue
        if modified > recent:
            continue
        if not Attachment.objects.filter(file=name).exists():
            _delete_file(name)
            removed += 1
    return removed


def delete_files_after_commit(names: list[str]) -> None:
    def delete() -> None:
        for name in names:
            _delete_file(name)

    transaction.on_commit(delete)
