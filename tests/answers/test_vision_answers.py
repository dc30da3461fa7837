"""Vision answers through the emulators: images reach the model clean and fitted, or not at all.

Prompts go through the real view; without a server loop the runner runs inline, so the answer
is finished when the POST returns. DashScope takes images by URL: its emulator fetches the
signed URL from a daphne process of ours that serves the same MEDIA_ROOT as this test.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.test import Client
from PIL import Image

from chatsite.celery import app
from conversations.chat import services
from conversations.images import attachments
from conversations.models import ACTIVE_STATUSES, Attachment, Conversation, Message, MessageStatus
from providers.emulators import Fault
from providers.models import ModelConfig
from tests.answers.test_celery_vision import QueueWorker
from tests.conftest import ARTIFACTS, ServerProcess, child_env
from tests.documents.pdfs import report
from tests.images import image_corpus as corpus
from tests.support import model, post_message, signed_in

CLOUDFLARE_VISION = "llama-3.2-11b-vision"
DASHSCOPE_VISION = "llama-3.2-90b-vision"
CLEAN_JPEG_MARKERS = {"APP0", "DQT", "SOF0", "DHT", "SOS"}
CLEAN_PNG_CHUNKS = {"IHDR", "PLTE", "IDAT", "IEND"}
LEAKS = (corpus.SECRET_TEXT.encode(), b"LeakyCam", b"Model-X-SECRET", b"GPS", b"Exif",
         b"xmpmeta", b"Photoshop", b"2024:05:01")


class ImageServer(ServerProcess):
    media: Path


@pytest.fixture(scope="module")
def image_server(django_db_setup: Any, django_db_blocker: Any,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageServer]:
    """daphne on the test database and a media folder of this module's own."""
    media = tmp_path_factory.mktemp("vision-media")
    with django_db_blocker.unblock():
        env = child_env(MEDIA_ROOT=str(media))
    server = ImageServer(env, ARTIFACTS / "logs" / "daphne-vision-answers.log")
    server.media = media
    yield server
    server.stop()


@pytest.fixture(scope="module")
def vision_worker(image_server: ImageServer, django_db_blocker: Any) -> Iterator[str | None]:
    """With REDIS_URL, vision answers go to Celery: a worker of this module's own, on a queue
    of its own, seeing the same MEDIA_ROOT and building signed URLs on the image server."""
    if not settings.REDIS_URL:
        yield None
        return
    queue = f"vision-answers-{uuid.uuid4().hex[:12]}"
    with django_db_blocker.unblock():
        env = child_env(MEDIA_ROOT=str(image_server.media), SITE_URL=image_server.url)
    worker = QueueWorker(env, ARTIFACTS / "logs" / "celery-vision-answers.log", "answers", queue)
    yield queue
    worker.stop()


@pytest.fixture
def vision(emulated: Any, image_server: ImageServer, vision_worker: str | None,
           settings: Any) -> Iterator[Any]:
    """The emulators plus our image server; signed URLs point at that server."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.MEDIA_ROOT = image_server.media
    settings.SITE_URL = image_server.url
    previous = app.conf.task_default_queue
    if vision_worker:
        app.conf.task_default_queue = vision_worker
    yield emulated
    app.conf.task_default_queue = previous


def chat(user: Any, slug: str) -> Conversation:
    return services.conversation_create(user, model=model(slug))


def upload(user: Any, data: bytes, name: str = "photo.jpg") -> str:
    response = signed_in(user).post(
        "/uploads/", {"image": _named(data, name)}, HTTP_ACCEPT="application/json")
    assert response.status_code == 201, response.content
    return str(response.json()["id"])


def _named(data: bytes, name: str) -> io.BytesIO:
    handle = io.BytesIO(data)
    handle.name = name
    return handle


def big_photo(size: tuple[int, int] = (2400, 1600)) -> bytes:
    """A large, noisy RGB JPEG (noise so it does not compress to nothing)."""
    bands = [Image.effect_noise(size, sigma) for sigma in (40, 60, 80)]
    return corpus.encode(Image.merge("RGB", bands), "JPEG", quality=90)


def model_calls(emulated: Any, vendor: str) -> list[Any]:
    return [r for r in emulated.requests if r.vendor == vendor and r.endpoint == "model"]


def image_calls(emulated: Any) -> list[Any]:
    """Answered model calls that carried an image (not a licence-gate refusal)."""
    calls = []
    for request in model_calls(emulated, "cloudflare"):
        if isinstance(request.json, dict) and "image" in request.json:
            calls.append(request)
    for request in model_calls(emulated, "dashscope"):
        if dashscope_image_urls(request):
            calls.append(request)
    return [call for call in calls if call.status == 200]


def dashscope_image_urls(request: Any) -> list[str]:
    urls = []
    for message in request.json.get("input", {}).get("messages", []):
        for part in message.get("content", []) if isinstance(message.get("content"), list) else []:
            if "image" in part:
                urls.append(part["image"])
    return urls


def answer_of(response: Any) -> Message:
    """The finished answer: inline runs are done when the POST returns, Celery ones soon."""
    assert response.status_code == 201, response.content
    answer_id = response.json()["assistant"]["id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = Message.objects.get(pk=answer_id)
        if answer.status not in ACTIVE_STATUSES:
            return answer
        time.sleep(0.05)
    raise AssertionError(f"answer still {answer.status}")


def assert_plain_raster(data: bytes) -> Image.Image:
    if data.startswith(corpus.PNG_MAGIC):
        assert set(corpus.png_chunk_types(data)) <= CLEAN_PNG_CHUNKS
    else:
        assert set(corpus.jpeg_marker_names(data)) <= CLEAN_JPEG_MARKERS
    for leak in LEAKS:
        assert leak not in data, leak
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    assert decoded.format in {"PNG", "JPEG"}
    assert not decoded.getexif()
    return decoded


def refusal(response: Any) -> dict[str, str]:
    assert response.status_code == 400, response.content
    return dict(response.json()["error"])


# --------------------------------------------------------------------------- refusals


def test_another_users_upload_cannot_be_attached_and_nothing_is_attached(
    vision: Any, owner: Any, outsider: Any
) -> None:
    conversation = chat(owner, CLOUDFLARE_VISION)
    theirs = upload(outsider, corpus.png_rgba())
    error = refusal(post_message(signed_in(owner), conversation, "Whose is this?",
                                 attachments=[theirs]))
    assert error["code"] == "bad_attachment"
    assert "not available" in error["message"]
    stolen = Attachment.objects.get(pk=theirs)
    assert stolen.message is None and stolen.conversation is None and stolen.owner == outsider
    assert Message.objects.count() == 0
    assert vision.requests == []
    # The owner still cannot read it, even after trying to attach it.
    assert signed_in(owner).get(f"/images/{theirs}/").status_code == 404


def test_a_team_member_cannot_attach_the_owners_unsent_upload(
    vision: Any, owner: Any, member: Any
) -> None:
    team = Group.objects.create(name="llamas")
    owner.groups.add(team)
    member.groups.add(team)
    conversation = chat(owner, CLOUDFLARE_VISION)
    Conversation.objects.filter(pk=conversation.pk).update(team=team)
    owners = upload(owner, corpus.png_rgba())
    error = refusal(post_message(signed_in(member), conversation, "Mine now",
                                 attachments=[owners]))
    assert error["code"] == "bad_attachment"
    assert Attachment.objects.get(pk=owners).message is None
    assert Message.objects.count() == 0 and vision.requests == []


def test_the_post_reply_shows_the_image_the_prompt_was_sent_with(vision: Any, owner: Any
                                                                 ) -> None:
    # A prompt without files is rendered without reading them (the service knows it stored
    # none); one with an image must still show it in the reply the page inserts.
    vision.set_cloudflare_licence(True)
    conversation = chat(owner, CLOUDFLARE_VISION)
    client = signed_in(owner)
    image = upload(owner, corpus.png_rgba())
    response = post_message(client, conversation, "Look [[emu:tokens n=5]]", attachments=[image])
    assert response.status_code == 201, response.content
    assert f"/images/{image}/" in response.json()["user"]["html"]
    answer_of(response)
    plain = post_message(client, conversation, "And now? [[emu:tokens n=5]]")
    assert plain.status_code == 201, plain.content
    assert "msg-images" not in plain.json()["user"]["html"]
    answer_of(plain)


def test_a_prompt_sent_with_an_image_and_a_document_keeps_both(
        vision: Any, owner: Any, settings: Any, tmp_path: Path) -> None:
    settings.REDIS_URL = ""  # the document is read in this process, from this test's media
    settings.MEDIA_ROOT = tmp_path
    vision.set_cloudflare_licence(True)
    conversation = chat(owner, CLOUDFLARE_VISION)
    client = signed_in(owner)
    image = upload(owner, corpus.png_rgba())
    document = client.post("/documents/", {"document": _named(report(31), "report.pdf")},
                           HTTP_ACCEPT="application/json")
    assert document.status_code == 201, document.content
    document_id = document.json()["id"]
    response = post_message(client, conversation, "Both [[emu:tokens n=5]]",
                            attachments=[image], documents=[document_id])
    assert response.status_code == 201, response.content
    html = response.json()["user"]["html"]
    assert f"/images/{image}/" in html and f'data-document="{document_id}"' in html
    prompt = Message.objects.get(pk=response.json()["user"]["id"])
    assert [str(a.pk) for a in prompt.attachments.all()] == [image]
    assert [str(d.pk) for d in prompt.documents.all()] == [document_id]
    answer_of(response)


def test_a_sent_made_up_or_malformed_image_id_is_refused(vision: Any, owner: Any) -> None:
    vision.set_cloudflare_licence(True)
    conversation = chat(owner, CLOUDFLARE_VISION)
    client = signed_in(owner)
    sent = upload(owner, corpus.png_rgba())
    answer_of(post_message(client, conversation, "First [[emu:tokens n=5]]", attachments=[sent]))
    before = (Message.objects.count(), len(vision.requests))
    for ids in ([sent], [str(uuid.uuid4())], ["not-a-uuid"]):
        error = refusal(post_message(client, conversation, "Again", attachments=ids))
        assert error["code"] == "bad_attachment", ids
    assert (Message.objects.count(), len(vision.requests)) == before
    prompt = Attachment.objects.get(pk=sent).message
    assert prompt is not None and prompt.content.startswith("First")


def test_a_text_model_refuses_images_before_any_provider_call(vision: Any, owner: Any) -> None:
    conversation = chat(owner, "llama-3.2-3b")
    image = upload(owner, corpus.png_rgba())
    error = refusal(post_message(signed_in(owner), conversation, "Look", attachments=[image]))
    assert error["code"] == "no_images"
    assert error["message"].startswith("Llama 3.2 3B Instruct does not take images.")
    assert Message.objects.count() == 0 and vision.requests == []
    assert Attachment.objects.get(pk=image).message is None  # still the uploader's to reuse


def test_dashscope_refuses_a_prompt_without_an_image_before_any_provider_call(
    vision: Any, owner: Any
) -> None:
    conversation = chat(owner, DASHSCOPE_VISION)
    error = refusal(post_message(signed_in(owner), conversation, "Describe nothing"))
    assert error["code"] == "image_required"
    assert error["message"] == ("Llama 3.2 90B Vision Instruct needs an image in the "
                                "conversation: attach one to your message.")
    assert Message.objects.count() == 0 and vision.requests == []


def test_more_images_than_the_model_takes_are_refused(vision: Any, owner: Any) -> None:
    conversation = chat(owner, CLOUDFLARE_VISION)
    ids = [upload(owner, corpus.png_rgba()), upload(owner, corpus.jpeg_1x1())]
    error = refusal(post_message(signed_in(owner), conversation, "Two", attachments=ids))
    assert error["code"] == "too_many_images"
    assert "at most 1 image" in error["message"]
    assert Attachment.objects.filter(message__isnull=False).count() == 0
    assert vision.requests == []


# --------------------------------------------------------------------------- Cloudflare


def test_cloudflare_answers_about_an_image_sent_as_clean_bytes(vision: Any, owner: Any) -> None:
    conversation = chat(owner, CLOUDFLARE_VISION)
    image = upload(owner, corpus.jpeg_with_every_leak(orientation=6))
    answer = answer_of(post_message(signed_in(owner), conversation, "What is on the photo?",
                                    attachments=[image]))
    assert answer.status == MessageStatus.COMPLETE, answer.error_message
    assert answer.content.startswith("Echo: What is on the photo?")
    # The first call met the licence gate (403/5016); the client agreed and sent it again.
    gated = [r for r in model_calls(vision, "cloudflare") if r.status == 403]
    assert len(gated) == 1 and "image" in gated[0].json
    [call] = image_calls(vision)
    sent = bytes(call.json["image"])
    assert call.image_bytes == [len(sent)]
    decoded = assert_plain_raster(sent)
    assert decoded.size == (20, 40)  # upright: the orientation went into the pixels
    assert "What is on the photo?" in call.json["prompt"]
    stored = Attachment.objects.get(pk=image)
    assert stored.message is not None and stored.conversation == conversation


def test_cloudflare_gets_a_large_image_scaled_to_the_models_side(vision: Any, owner: Any) -> None:
    vision.set_cloudflare_licence(True)
    conversation = chat(owner, CLOUDFLARE_VISION)
    image = upload(owner, big_photo((2400, 1600)))
    answer = answer_of(post_message(signed_in(owner), conversation, "Big one",
                                    attachments=[image]))
    assert answer.status == MessageStatus.COMPLETE, answer.error_message
    [call] = image_calls(vision)
    limit = ModelConfig.objects.get(slug=CLOUDFLARE_VISION).max_image_side
    decoded = assert_plain_raster(bytes(call.json["image"]))
    assert decoded.format == "JPEG"
    assert max(decoded.size) == limit == 1120
    assert decoded.size == (1120, 746)  # aspect ratio kept
    stored = Attachment.objects.get(pk=image)
    assert (stored.width, stored.height) == (2400, 1600)  # the uploader's copy is untouched


def test_images_shrink_further_when_a_models_limits_are_smaller(vision: Any, owner: Any) -> None:
    vision.set_cloudflare_licence(True)
    ModelConfig.objects.filter(slug=CLOUDFLARE_VISION).update(
        max_image_side=300, max_image_bytes=8_000)
    conversation = chat(owner, CLOUDFLARE_VISION)
    image = upload(owner, big_photo((900, 600)))
    answer = answer_of(post_message(signed_in(owner), conversation, "Small please",
                                    attachments=[image]))
    assert answer.status == MessageStatus.COMPLETE, answer.error_message
    [call] = image_calls(vision)
    sent = bytes(call.json["image"])
    assert len(sent) <= 8_000
    assert max(assert_plain_raster(sent).size) <= 300


def test_an_image_that_already_fits_is_sent_as_stored(vision: Any, owner: Any) -> None:
    vision.set_cloudflare_licence(True)
    conversation = chat(owner, CLOUDFLARE_VISION)
    image = upload(owner, corpus.png_rgba())
    answer_of(post_message(signed_in(owner), conversation, "Tiny", attachments=[image]))
    [call] = image_calls(vision)
    stored = Attachment.objects.get(pk=image)
    assert bytes(call.json["image"]) == attachments.read_bytes(stored)


# --------------------------------------------------------------------------- DashScope


def test_dashscope_fetches_the_signed_url_and_answers(vision: Any, owner: Any,
                                                      image_server: ImageServer) -> None:
    conversation = chat(owner, DASHSCOPE_VISION)
    image = upload(owner, corpus.jpeg_with_every_leak())
    answer = answer_of(post_message(signed_in(owner), conversation, "Where was this taken?",
                                    attachments=[image]))
    assert answer.status == MessageStatus.COMPLETE, answer.error_message
    assert answer.content.startswith("Echo: Where was this taken?")
    [call] = image_calls(vision)
    [url] = dashscope_image_urls(call)
    assert url.startswith(f"{image_server.url}/i/{image}.s1120?exp=")  # scaled to the model
    stored = Attachment.objects.get(pk=image)
    assert call.image_bytes == [stored.size]  # the emulator fetched exactly our stored bytes
    fetched = httpx.get(url)  # what the provider saw, fetched the same way
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == stored.mime_type
    assert fetched.headers["x-content-type-options"] == "nosniff"
    assert fetched.content == attachments.read_bytes(stored)
    assert_plain_raster(fetched.content)
    # The URL alone opens nothing else: not the session route, not another id.
    assert Client().get(f"/images/{image}/").status_code == 302
    other = upload(owner, corpus.png_rgba())
    assert httpx.get(url.replace(image, other)).status_code == 404


def test_dashscope_fetches_an_image_scaled_to_the_models_side(vision: Any, owner: Any) -> None:
    conversation = chat(owner, DASHSCOPE_VISION)
    image = upload(owner, big_photo((2400, 1600)))
    answer = answer_of(post_message(signed_in(owner), conversation, "Big one",
                                    attachments=[image]))
    assert answer.status == MessageStatus.COMPLETE, answer.error_message
    [call] = image_calls(vision)
    [url] = dashscope_image_urls(call)
    fetched = httpx.get(url)
    limit = ModelConfig.objects.get(slug=DASHSCOPE_VISION).max_image_side
    assert max(assert_plain_raster(fetched.content).size) <= limit


# --------------------------------------------------------------------------- lost files


def test_an_image_whose_file_was_lost_is_shown_expired_and_the_chat_goes_on(
    vision: Any, owner: Any, image_server: ImageServer
) -> None:
    vision.set_cloudflare_licence(True)
    conversation = chat(owner, CLOUDFLARE_VISION)
    client = signed_in(owner)
    image = upload(owner, corpus.png_rgba())
    first = answer_of(post_message(client, conversation, "First look [[emu:tokens n=5]]",
                                   attachments=[image]))
    assert first.status == MessageStatus.COMPLETE
    stored = Attachment.objects.get(pk=image)
    (image_server.media / str(stored.file.name)).unlink()  # a restore without media, a bad disk
    answer = answer_of(post_message(client, conversation, "Still there? [[emu:tokens n=5]]"))
    assert answer.status == MessageStatus.COMPLETE, answer.error_message
    last = model_calls(vision, "cloudflare")[-1]
    assert "image" not in last.json and last.status == 200
    stored.refresh_from_db()
    assert stored.expired and not stored.file
    assert client.get(f"/images/{image}/").status_code == 410
    assert "image expired" in client.get(f"/c/{conversation.pk}/").content.decode()


# --------------------------------------------------------------------------- one image a request


def test_a_dashscope_conversation_goes_on_for_30_turns_with_one_photo_at_the_start(
    vision: Any, owner: Any, settings: Any
) -> None:
    """Seed 002: the request needs one image; follow-ups may be text only. Every request
    carries exactly the first photo; the oldest turns give way to the 8,192-token context,
    never the photo's turn or the latest prompt."""
    settings.RATE_LIMIT_PER_MINUTE = 100
    conversation = chat(owner, DASHSCOPE_VISION)
    image = upload(owner, corpus.jpeg_with_every_leak())
    client = signed_in(owner)
    first = answer_of(post_message(client, conversation, "What is in this photo?",
                                   attachments=[image]))
    assert first.status == MessageStatus.COMPLETE, first.error_message
    padding = " Tell me more about its colours, its place and its history, please." * 12
    for turn in range(2, 31):
        answer = answer_of(post_message(client, conversation, f"Question {turn}.{padding}"))
        assert answer.status == MessageStatus.COMPLETE, (turn, answer.error_message)
    calls = [c for c in model_calls(vision, "dashscope") if c.status == 200]
    assert len(calls) == 30
    for call in calls:
        urls = dashscope_image_urls(call)
        assert len(urls) == 1 and f"/i/{image}." in urls[0]  # the one photo, every time
        sent = call.json["input"]["messages"]
        assert sent[-1]["content"][-1]["text"].startswith(("Question", "What is in"))
    last = calls[-1].json["input"]["messages"]
    assert any("image" in part for part in last[0]["content"])  # the photo's turn was kept
    assert answer.context_dropped > 0  # the budget cut the middle of the conversation


def test_an_image_dashscope_cannot_download_tells_the_admin_about_site_url(
    vision: Any, owner: Any
) -> None:
    vision.script("dashscope", Fault(
        "500-before", code="InvalidParameter.DataInspection", status=400,
        message="Download the media resource timed out during the data inspection process."),
        times=None)
    conversation = chat(owner, DASHSCOPE_VISION)
    image = upload(owner, corpus.png_rgba())
    answer = answer_of(post_message(signed_in(owner), conversation, "What is it?",
                                    attachments=[image]))
    assert answer.status == MessageStatus.FAILED and answer.error_code == "bad_request"
    assert "SITE_URL" in answer.error_message
    assert "content filter" not in answer.error_message  # not moderation
    assert len(model_calls(vision, "dashscope")) == 1  # a client error is not retried


def test_dashscopes_free_trial_running_out_says_so(vision: Any, owner: Any) -> None:
    vision.script("dashscope", "free-tier-before", times=None)
    conversation = chat(owner, DASHSCOPE_VISION)
    image = upload(owner, corpus.png_rgba())
    answer = answer_of(post_message(signed_in(owner), conversation, "What is it?",
                                    attachments=[image]))
    assert answer.status == MessageStatus.FAILED
    assert answer.error_code == "quota_exhausted"
    assert "free trial" in answer.error_message and "resets later" not in answer.error_message


def test_a_rewritten_cumulative_tail_is_stored_as_the_vendor_ends_it(vision: Any,
                                                                      owner: Any) -> None:
    conversation = chat(owner, DASHSCOPE_VISION)
    image = upload(owner, corpus.png_rgba())
    answer = answer_of(post_message(signed_in(owner), conversation,
                                    "Describe it [[emu:dashscope-rewrite n=4]]",
                                    attachments=[image]))
    assert answer.status == MessageStatus.COMPLETE, answer.error_message
    [call] = [c for c in model_calls(vision, "dashscope") if c.status == 200]
    assert answer.content == call.sent_text and "\ufffd" not in answer.content
