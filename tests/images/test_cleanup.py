"""Image cleanup: nothing nobody can see stays on disk, nothing somebody can see goes missing.

Transactional: files of deleted rows are removed after commit, and the concurrency test runs
real `manage.py cleanup_images` processes against the same database and MEDIA_ROOT.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from conversations.chat import services
from conversations.errors import ServiceError
from conversations.images import tasks
from conversations.images.attachments import cleanup
from conversations.models import Attachment, Conversation, Message, MessageStatus
from tests.conftest import ROOT, child_env
from tests.images import image_corpus as corpus
from tests.support import model, queue_answer, signed_in

pytestmark = pytest.mark.django_db(transaction=True)

VISION = "llama-3.2-11b-vision"
HOUR = 3600


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    return root


def stored_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def upload(user: Any, data: bytes | None = None) -> Attachment:
    handle = io.BytesIO(data or corpus.png_rgba())
    handle.name = "photo.png"
    response = signed_in(user).post("/uploads/", {"image": handle},
                                    HTTP_ACCEPT="application/json")
    assert response.status_code == 201, response.content
    return Attachment.objects.get(pk=response.json()["id"])


def send(user: Any, conversation: Conversation, attachment: Attachment) -> Message:
    """Attach an upload to a new prompt (no answer is generated: only the prompt matters)."""
    answer = queue_answer(user, conversation, "Look at this", attachment_ids=[attachment.pk])
    Message.objects.filter(pk=answer.pk).update(status=MessageStatus.COMPLETE, content="A llama.")
    return Message.objects.get(pk=answer.parent_id)


def age(attachment: Attachment, seconds: float, media: Path) -> None:
    """Make an attachment (row and file) look `seconds` old."""
    when = timezone.now() - timedelta(seconds=seconds)
    Attachment.objects.filter(pk=attachment.pk).update(created_at=when)
    if attachment.file:
        past = time.time() - seconds
        os.utime(media / str(attachment.file.name), (past, past))


def orphan(media: Path, extension: str = "png", seconds_old: float = 2 * HOUR) -> str:
    token = uuid.uuid4().hex
    name = f"{token[:2]}/{token[2:4]}/{token}.{extension}"
    path = media / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(corpus.png_rgba())
    past = time.time() - seconds_old
    os.utime(path, (past, past))
    return name


def test_unsent_uploads_past_the_grace_go_with_their_files_and_sent_ones_stay(
    owner: Any, media: Path
) -> None:
    conversation = services.conversation_create(owner, model=model(VISION))
    stale, fresh, sent = upload(owner), upload(owner), upload(owner)
    send(owner, conversation, sent)
    for attachment in (stale, sent):
        age(attachment, 25 * HOUR, media)
    report = cleanup()
    assert (report.unattached, report.expired, report.orphan_files) == (1, 0, 0)
    assert not Attachment.objects.filter(pk=stale.pk).exists()
    assert stored_files(media) == {fresh.file.name, sent.file.name}
    assert signed_in(owner).get(f"/images/{sent.pk}/").status_code == 200
    assert signed_in(owner).get(f"/images/{fresh.pk}/").status_code == 200
    assert signed_in(owner).get(f"/images/{stale.pk}/").status_code == 404


def test_retention_expires_old_images_and_the_message_says_image_expired(
    owner: Any, media: Path, settings: Any
) -> None:
    conversation = services.conversation_create(owner, model=model(VISION))
    old, recent = upload(owner), upload(owner)
    send(owner, conversation, old)
    send(owner, conversation, recent)
    age(old, 31 * 24 * HOUR, media)
    assert cleanup().expired == 0, "retention is off by default: images are kept forever"
    settings.IMAGE_RETENTION_DAYS = 30
    report = cleanup()
    assert (report.unattached, report.expired, report.orphan_files) == (0, 1, 0)
    old.refresh_from_db()
    assert old.expired and not old.file and old.message is not None
    assert stored_files(media) == {recent.file.name}
    client = signed_in(owner)
    gone = client.get(f"/images/{old.pk}/")
    assert gone.status_code == 410
    assert gone.content.decode() == "This image has expired."
    page = client.get(f"/c/{conversation.pk}/").content.decode()
    assert page.count("image expired") == 1
    assert f'src="/images/{recent.pk}/"' in page and f"/images/{old.pk}/" not in page
    assert client.get(f"/images/{recent.pk}/").status_code == 200
    assert cleanup().expired == 0  # a second pass finds nothing more to do


def test_deleting_a_conversation_deletes_its_files_and_only_its_files(
    owner: Any, media: Path
) -> None:
    doomed = services.conversation_create(owner, model=model(VISION))
    kept = services.conversation_create(owner, model=model(VISION))
    first, second, other, unsent = upload(owner), upload(owner), upload(owner), upload(owner)
    send(owner, doomed, first)
    send(owner, doomed, second)
    send(owner, kept, other)
    response = signed_in(owner).post(f"/c/{doomed.pk}/delete/")
    assert response.status_code == 302
    assert not Conversation.objects.filter(pk=doomed.pk).exists()
    assert set(Attachment.objects.values_list("pk", flat=True)) == {other.pk, unsent.pk}
    assert stored_files(media) == {other.file.name, unsent.file.name}


def test_deleting_an_account_deletes_its_uploads(owner: Any, member: Any, media: Path) -> None:
    mine, theirs = upload(owner), upload(member)
    member.delete()
    assert stored_files(media) == {mine.file.name}
    assert not Attachment.objects.filter(pk=theirs.pk).exists()


def test_orphan_files_are_removed_but_fresh_files_and_other_files_are_kept(
    owner: Any, media: Path
) -> None:
    known = upload(owner)
    age(known, 3 * HOUR, media)
    old_png, old_jpg = orphan(media, "png"), orphan(media, "jpg")
    just_saved = orphan(media, "png", seconds_old=5)  # its row may not be committed yet
    (media / "README.txt").write_text("not ours")
    report = cleanup()
    assert report.orphan_files == 2
    files = stored_files(media)
    assert old_png not in files and old_jpg not in files
    assert files == {known.file.name, just_saved, "README.txt"}


def test_files_that_are_not_shaped_like_ours_are_never_taken_for_orphans(
    owner: Any, media: Path
) -> None:
    """MEDIA_ROOT may be shared: only 'ab/cd/abcd<28 hex>.png|jpg' files are ours to delete."""
    token = uuid.uuid4().hex
    foreign = ["logo.png", "exports/chart.jpg", f"{token[:2]}/{token[2:4]}/holiday.png",
               f"ff/ee/{token}.png", f"{token[:2]}/{token[2:4]}/{token}.gif",
               f"{token[:2]}/{token[2:4]}/deeper/{token}.png"]
    past = time.time() - 30 * 24 * HOUR
    for name in foreign:
        path = media / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(corpus.png_rgba())
        os.utime(path, (past, past))
    ours = orphan(media)
    assert cleanup().orphan_files == 1
    assert stored_files(media) == set(foreign)
    assert ours not in stored_files(media)


def test_the_command_and_the_periodic_task_report_what_they_did(
    owner: Any, media: Path
) -> None:
    age(upload(owner), 25 * HOUR, media)
    orphan(media)
    out = io.StringIO()
    call_command("cleanup_images", stdout=out)
    assert out.getvalue().strip() == (
        "removed 1 unsent upload(s), expired 0 image(s), deleted 1 orphaned file(s)")
    assert tasks.cleanup_images() == (
        "removed 0 unsent upload(s), expired 0 image(s), deleted 0 orphaned file(s)")
    assert stored_files(media) == set()


REPORT = re.compile(r"removed (\d+) unsent upload\(s\), expired (\d+) image\(s\), "
                    r"deleted (\d+) orphaned file\(s\)")


def test_two_cleanups_running_at_once_remove_everything_once_and_nothing_else(
    owner: Any, media: Path
) -> None:
    conversation = services.conversation_create(owner, model=model(VISION))
    stale = [upload(owner) for _ in range(6)]
    expiring = [upload(owner) for _ in range(4)]
    kept = [upload(owner) for _ in range(2)]
    for attachment in expiring + kept:
        send(owner, conversation, attachment)
    for attachment in stale:
        age(attachment, 25 * HOUR, media)
    for attachment in expiring:
        age(attachment, 40 * 24 * HOUR, media)
    orphans = {orphan(media) for _ in range(3)}
    env = child_env(MEDIA_ROOT=str(media), IMAGE_RETENTION_DAYS="30")
    command = [sys.executable, "manage.py", "cleanup_images"]
    runs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    for run, (_out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err.decode(errors="replace")
    counts = [tuple(int(n) for n in REPORT.search(out.decode()).groups())  # type: ignore[union-attr]
              for out, _err in outputs]
    # Each row is removed or expired by exactly one of the two runs.
    assert sum(c[0] for c in counts) == 6
    assert sum(c[1] for c in counts) == 4
    assert not stored_files(media) & orphans
    assert not Attachment.objects.filter(pk__in=[a.pk for a in stale]).exists()
    assert Attachment.objects.filter(pk__in=[a.pk for a in expiring], expired=True,
                                     file="").count() == 4
    assert stored_files(media) == {a.file.name for a in kept}
    for attachment in kept:
        assert signed_in(owner).get(f"/images/{attachment.pk}/").status_code == 200


def test_a_dashscope_chat_whose_only_image_expired_asks_for_an_image_again(
    emulated: Any, owner: Any, media: Path, settings: Any
) -> None:
    """DashScope's Llama needs one image in the request. Once the conversation's only image
    expired, a text-only follow-up is refused before anything is stored or called, saying to
    attach an image again; with a new image the conversation goes on."""
    conversation = services.conversation_create(owner, model=model("llama-3.2-90b-vision"))
    first = upload(owner)
    send(owner, conversation, first)
    age(first, 40 * 24 * HOUR, media)
    settings.IMAGE_RETENTION_DAYS = 30
    assert cleanup().expired == 1
    messages_before = Message.objects.count()
    with pytest.raises(ServiceError) as refused:
        services.message_post(owner, conversation, text="And now?", client_id=uuid.uuid4())
    assert refused.value.code == "image_required"
    assert "attach an image again" in refused.value.message
    assert Message.objects.count() == messages_before
    assert emulated.requests == []
