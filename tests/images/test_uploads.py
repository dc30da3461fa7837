"""Uploading images through POST /uploads/ and reading them back (T03, T07, T11, T12, T13, T24).

Every file goes through the real view, the one validator and the real storage (MEDIA_ROOT is a
temporary folder per test). A refusal must leave nothing behind: no row, no file.
"""

from __future__ import annotations

import io
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from PIL import Image

from conversations.chat import services
from conversations.images import attachments, validator
from conversations.models import Attachment, Conversation
from tests.images import image_corpus as corpus
from tests.support import model, signed_in

pytestmark = pytest.mark.django_db

GENERATED = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{32}\.(png|jpg)")
# What our encoder writes and nothing else: no EXIF/XMP/ICC (APPn), no comments, no text chunks.
CLEAN_JPEG_MARKERS = {"APP0", "DQT", "SOF0", "DHT", "SOS"}
CLEAN_PNG_CHUNKS = {"IHDR", "PLTE", "IDAT", "IEND"}
LEAKS = (corpus.SECRET_TEXT.encode(), b"LeakyCam", b"Model-X-SECRET", b"GPS", b"Exif",
         b"xmpmeta", b"<script", b"<html", b"alert(", b"Photoshop", b"2024:05:01")


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    # Personas are created per test; the production hasher would cost ~0.3 s each.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def media(settings: Any, tmp_path: Path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    return root


def stored_name(attachment: Attachment) -> str:
    return str(attachment.file.name)


def stored_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def multipart(parts: list[tuple[str, bytes, bytes]], boundary: str = "vision-test-b0undary"
              ) -> tuple[bytes, str]:
    """A multipart body built by hand, so file names reach the server exactly as written."""
    body = io.BytesIO()
    for field_name, filename, data in parts:
        body.write(f"--{boundary}\r\n".encode())
        body.write(f'Content-Disposition: form-data; name="{field_name}"; filename="'.encode()
                   + filename + b'"\r\n')
        body.write(b"Content-Type: image/png\r\n\r\n")
        body.write(data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def upload(client: Client, data: bytes, filename: bytes = b"photo.png") -> Any:
    body, content_type = multipart([("image", filename, data)])
    return client.post("/uploads/", body, content_type=content_type,
                       HTTP_ACCEPT="application/json")


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Refused:
    code: str


@dataclass(frozen=True)
class Accepted:
    mime: str
    size: tuple[int, int]


CORPUS: dict[str, tuple[Callable[[], bytes], Refused | Accepted]] = {
    # refused: what a decoder must never be trusted with
    "bomb-png-header-30000x30000": (corpus.bomb_png_30000, Refused("too_many_pixels")),
    "bomb-png-header-8000x8000": (lambda: corpus.png_header_claiming(8000, 8000),
                                  Refused("too_many_pixels")),
    "bomb-ico-embedded-png": (corpus.bomb_ico_embedded_png, Refused("too_many_pixels")),
    "bomb-webp-header-20000": (lambda: corpus.webp_header_claiming(20000, 20000),
                               Refused("dimensions_too_large")),
    "huge-dimensions-gif-js-classic": (corpus.gif_js_polyglot_classic,
                                       Refused("dimensions_too_large")),
    "truncated-jpeg": (corpus.truncated_jpeg, Refused("corrupt")),
    "truncated-png": (corpus.truncated_png, Refused("corrupt")),
    "html-renamed-png": (corpus.html_named_png, Refused("unsupported_format")),
    "svg-with-script": (corpus.svg_with_script, Refused("unsupported_format")),
    "pdf": (corpus.pdf_bytes, Refused("unsupported_format")),
    "psd": (corpus.psd_header, Refused("unsupported_format")),
    "fits": (corpus.fits_header, Refused("unsupported_format")),
    "zero-width-png": (corpus.png_zero_width, Refused("corrupt")),
    # accepted: re-encoded to PNG (alpha/palette) or JPEG, first frame only, no metadata
    "png-1x1": (corpus.png_1x1, Accepted("image/jpeg", (1, 1))),
    "jpeg-1x1": (corpus.jpeg_1x1, Accepted("image/jpeg", (1, 1))),
    "png-1x500": (corpus.png_1xn, Accepted("image/jpeg", (1, 500))),
    "png-rgba": (corpus.png_rgba, Accepted("image/png", (10, 6))),
    "tiff": (corpus.tiff_rgb, Accepted("image/jpeg", (20, 10))),
    "gif-animated": (corpus.gif_animated, Accepted("image/png", (12, 12))),
    "gif-10000-frames": (corpus.gif_many_frames, Accepted("image/png", (1, 1))),
    "gif-js-polyglot": (corpus.gif_js_polyglot, Accepted("image/png", (4, 4))),
    "png-html-polyglot": (corpus.png_html_polyglot, Accepted("image/jpeg", (8, 8))),
    "jpeg-exif-gps-rotated": (corpus.jpeg_exif_gps_orientation6, Accepted("image/jpeg", (20, 40))),
    "png-text-chunks": (corpus.png_with_text_chunks, Accepted("image/png", (8, 8))),
    "webp": (corpus.webp_rgb, Accepted("image/jpeg", (24, 16))),
}


def assert_plain_raster(data: bytes, mime: str) -> None:
    if mime == "image/png":
        assert set(corpus.png_chunk_types(data)) <= CLEAN_PNG_CHUNKS, corpus.png_chunk_types(data)
    else:
        assert set(corpus.jpeg_marker_names(data)) <= CLEAN_JPEG_MARKERS, \
            corpus.jpeg_marker_names(data)
    for leak in LEAKS:
        assert leak not in data, leak
    with Image.open(io.BytesIO(data)) as decoded:
        assert not decoded.getexif()
        assert decoded.format == {"image/png": "PNG", "image/jpeg": "JPEG"}[mime]


@pytest.mark.parametrize("name", [k for k, (_b, e) in CORPUS.items() if isinstance(e, Refused)])
def test_a_hostile_file_is_refused_with_a_clear_message_and_nothing_is_stored(
    name: str, owner: Any, media: Path
) -> None:
    build, expected = CORPUS[name]
    assert isinstance(expected, Refused)
    response = upload(signed_in(owner), build(), filename=f"{name}.png".encode())
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == expected.code
    assert len(error["message"]) > 15 and error["message"].endswith(".")
    assert Attachment.objects.count() == 0
    assert stored_files(media) == []


@pytest.mark.parametrize("name", [k for k, (_b, e) in CORPUS.items() if isinstance(e, Accepted)])
def test_an_awkward_image_is_stored_re_encoded_under_a_generated_name_and_served_clean(
    name: str, owner: Any, media: Path
) -> None:
    build, expected = CORPUS[name]
    assert isinstance(expected, Accepted)
    client = signed_in(owner)
    response = upload(client, build(), filename=f"{name}.png".encode())
    assert response.status_code == 201, response.content
    body = response.json()
    attachment = Attachment.objects.get(pk=body["id"])
    assert (body["width"], body["height"]) == expected.size
    assert body["url"] == f"/images/{attachment.pk}/"
    assert body["name"] == f"{name}.png"
    assert attachment.owner == owner and attachment.message is None
    assert attachment.mime_type == expected.mime
    assert GENERATED.fullmatch(stored_name(attachment))
    assert stored_files(media) == [stored_name(attachment)]
    on_disk = (media / stored_name(attachment)).read_bytes()
    assert len(on_disk) == attachment.size

    served = client.get(body["url"])
    assert served.status_code == 200
    assert served["Content-Type"] == expected.mime
    assert served["X-Content-Type-Options"] == "nosniff"
    assert served["Content-Disposition"].startswith("inline; filename=\"image.")
    assert "sandbox" in served["Content-Security-Policy"]
    assert served.content == on_disk
    assert_plain_raster(served.content, expected.mime)


def test_an_exif_rotated_photo_is_stored_upright_without_its_gps(owner: Any, media: Path) -> None:
    response = upload(signed_in(owner), corpus.jpeg_exif_gps_orientation6(), b"holiday.jpg")
    attachment = Attachment.objects.get(pk=response.json()["id"])
    with Image.open(media / stored_name(attachment)) as stored:
        assert stored.size == (20, 40)
        rgb = stored.convert("RGB")
        top, bottom = rgb.getpixel((10, 5)), rgb.getpixel((10, 35))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 > top[2], "red on top once the orientation is applied"
    assert bottom[2] > 200 > bottom[0]


# raw filename as sent -> the name shown back (display only; never part of a path)
HOSTILE_NAMES = {
    "parent-traversal": (b"../../x.png", "x.png"),
    "windows-traversal": (b"..\\..\\x.png", "x.png"),
    "absolute": (b"/etc/passwd", "passwd"),
    "nul-byte": (b"x.png\x00.html", "x.png.html"),
    "rtl-override": ("invoice\u202egnp.exe".encode(), "invoicegnp.exe"),
    "long-unicode": (("長" * 300 + ".png").encode(), "長" * 115 + "\u2026.png"),
}


@pytest.mark.parametrize("label", HOSTILE_NAMES)
def test_a_hostile_filename_never_reaches_the_storage_path(
    label: str, owner: Any, media: Path, tmp_path: Path
) -> None:
    raw, expected_name = HOSTILE_NAMES[label]
    response = upload(signed_in(owner), corpus.png_rgba(), filename=raw)
    assert response.status_code == 201, response.content
    attachment = Attachment.objects.get(pk=response.json()["id"])
    assert GENERATED.fullmatch(stored_name(attachment))
    # Everything written anywhere under the test folder is the one generated file.
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert written == [media / stored_name(attachment)]
    assert (media / stored_name(attachment)).resolve().is_relative_to(media.resolve())
    assert response.json()["name"] == attachment.display_name == expected_name


def test_a_hundred_and_one_files_in_one_request_are_refused_without_a_500(
    owner: Any, media: Path
) -> None:
    png = corpus.png_rgba()
    body, content_type = multipart([("image", f"{i}.png".encode(), png) for i in range(101)])
    response = signed_in(owner).post("/uploads/", body, content_type=content_type,
                                     HTTP_ACCEPT="application/json")
    assert response.status_code == 400
    assert Attachment.objects.count() == 0
    assert stored_files(media) == []


def test_an_upload_over_the_byte_limit_is_refused_before_decoding(
    owner: Any, media: Path, settings: Any
) -> None:
    settings.IMAGE_MAX_BYTES = 64 * 1024
    response = upload(signed_in(owner), corpus.at_size(100_000))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "too_large"
    assert "limit" in error["message"]
    assert Attachment.objects.count() == 0 and stored_files(media) == []


def test_an_empty_file_or_no_file_is_refused(owner: Any, media: Path) -> None:
    client = signed_in(owner)
    empty = upload(client, b"")
    assert empty.status_code == 400
    assert empty.json()["error"]["code"] in {"empty", "no_file"}
    missing = client.post("/uploads/", {"other": "x"}, HTTP_ACCEPT="application/json")
    assert missing.status_code == 400
    assert missing.json()["error"] == {"code": "no_file", "message": "Choose an image."}
    assert Attachment.objects.count() == 0 and stored_files(media) == []


def test_uploading_needs_a_signed_in_user_and_a_post(owner: Any, media: Path) -> None:
    anonymous = upload(Client(), corpus.png_rgba())
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    assert signed_in(owner).get("/uploads/").status_code == 405
    assert Attachment.objects.count() == 0 and stored_files(media) == []


# --------------------------------------------------------------------------- access to images


@dataclass
class Scene:
    conversation: Conversation
    sent: Attachment  # attached to a message of the team conversation
    unsent_of_outsider: Attachment


@pytest.fixture
def scene(owner: Any, member: Any, outsider: Any, media: Path) -> Scene:
    team = Group.objects.create(name="llamas")
    owner.groups.add(team)
    member.groups.add(team)
    conversation = services.conversation_create(owner, model=model("llama-3.2-11b-vision"))
    conversation.team = team
    conversation.save()
    sent_id = upload(signed_in(owner), corpus.png_rgba()).json()["id"]
    services.message_post(owner, conversation, text="What is this?", client_id=uuid.uuid4(),
                          attachment_ids=[uuid.UUID(sent_id)])
    unsent_id = upload(signed_in(outsider), corpus.jpeg_1x1()).json()["id"]
    return Scene(conversation, Attachment.objects.get(pk=sent_id),
                 Attachment.objects.get(pk=unsent_id))


def test_an_image_is_readable_by_the_owner_and_team_members_only(
    scene: Scene, owner: Any, member: Any, outsider: Any
) -> None:
    url = f"/images/{scene.sent.pk}/"
    assert scene.sent.conversation == scene.conversation
    for user in (owner, member):
        response = signed_in(user).get(url)
        assert response.status_code == 200, user
        assert response["Content-Type"] == "image/png"
    hidden = signed_in(outsider).get(url)
    assert hidden.status_code == 404
    assert not hidden.content.startswith(corpus.PNG_MAGIC)
    anonymous = Client().get(url)
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]


def test_a_member_removed_from_the_team_loses_the_image(scene: Scene, member: Any) -> None:
    client = signed_in(member)
    assert client.get(f"/images/{scene.sent.pk}/").status_code == 200
    member.groups.clear()
    assert client.get(f"/images/{scene.sent.pk}/").status_code == 404


def test_an_unsent_upload_is_visible_to_its_uploader_only(
    scene: Scene, owner: Any, member: Any, outsider: Any
) -> None:
    url = f"/images/{scene.unsent_of_outsider.pk}/"
    assert signed_in(outsider).get(url).status_code == 200
    assert signed_in(owner).get(url).status_code == 404
    assert signed_in(member).get(url).status_code == 404
    assert signed_in(owner).get(f"/images/{uuid.uuid4()}/").status_code == 404


def test_nobody_but_the_uploader_can_discard_and_only_before_sending(
    scene: Scene, owner: Any, member: Any, outsider: Any, media: Path,
    django_capture_on_commit_callbacks: Any,
) -> None:
    unsent = scene.unsent_of_outsider
    for user in (owner, member):
        assert signed_in(user).post(f"/uploads/{unsent.pk}/discard/").status_code == 404
    for user in (owner, member, outsider):  # a sent image is part of the conversation now
        assert signed_in(user).post(f"/uploads/{scene.sent.pk}/discard/").status_code == 404
    assert Attachment.objects.count() == 2
    assert signed_in(outsider).get(f"/uploads/{unsent.pk}/discard/").status_code == 405
    with django_capture_on_commit_callbacks(execute=True):
        response = signed_in(outsider).post(f"/uploads/{unsent.pk}/discard/")
    assert response.json() == {"deleted": True}
    assert not Attachment.objects.filter(pk=unsent.pk).exists()
    assert stored_files(media) == [scene.sent.file.name]


def _query(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    return parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}


def test_a_signed_url_serves_the_image_without_a_session(scene: Scene) -> None:
    path, query = _query(attachments.signed_url(scene.sent))
    assert path == f"/i/{scene.sent.pk}"
    response = Client().get(path, query)
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response.content == scene.sent.file.open("rb").read()


def test_an_expired_or_tampered_signed_url_is_not_found(scene: Scene) -> None:
    path, query = _query(attachments.signed_url(scene.sent))
    secret = attachments._signing_secret()
    old = validator.sign_image_url("http://x", str(scene.sent.pk), secret=secret, ttl_seconds=60,
                                now=time.time() - 3600)
    _old_path, old_query = _query(old)
    flipped = query["sig"][:-1] + ("A" if query["sig"][-1] != "A" else "B")
    other = scene.unsent_of_outsider.pk
    attempts = {
        "expired": (path, old_query),
        "tampered signature": (path, {**query, "sig": flipped}),
        "extended expiry": (path, {**query, "exp": str(int(query["exp"]) + 3600)}),
        "tampered id": (f"/i/{other}", query),
        "no signature": (path, {"exp": query["exp"]}),
        "not a uuid": ("/i/..%2Fetc%2Fpasswd", query),
    }
    for label, (url, params) in attempts.items():
        response = Client().get(url, params)
        assert response.status_code == 404, label
        assert not response.content.startswith(corpus.PNG_MAGIC), label


def test_an_image_of_a_deleted_upload_is_gone_for_everyone(
    scene: Scene, owner: Any, django_capture_on_commit_callbacks: Any, media: Path
) -> None:
    path, query = _query(attachments.signed_url(scene.sent))
    with django_capture_on_commit_callbacks(execute=True):
        services.conversation_delete(scene.conversation)
    assert signed_in(owner).get(f"/images/{scene.sent.pk}/").status_code == 404
    assert Client().get(path, query).status_code == 404
    assert stored_files(media) == [scene.unsent_of_outsider.file.name]
