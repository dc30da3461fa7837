"""Documents in the conversation: upload checked by content, text extracted once, sent to the
model as quoted context within the budget (all of it, or the passages the question needs),
the page saying which parts were used; the same access, sharing, export and retention as images.
Through the emulators over real sockets."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from conversations.chat import services, transfer
from conversations.documents import context, store
from conversations.documents.tasks import extract_document
from conversations.models import Conversation, Document, DocumentPassage, Message
from conversations.sharing import links
from tests.documents.pdfs import make_pdf, report
from tests.support import model, post_message, signed_in


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def extraction_in_process(settings: Any) -> None:
    """Extraction in this process (the embedded configuration) whatever REDIS_URL says: these
    tests read the documents this test's MEDIA_ROOT holds, which a shared worker cannot see.
    The Celery task itself is tested below by calling it."""
    settings.REDIS_URL = ""


@pytest.fixture
def media(settings: Any, tmp_path: Path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    return root


def upload(client: Client, data: bytes, name: str = "report.pdf") -> Any:
    handle = io.BytesIO(data)
    handle.name = name
    return client.post("/documents/", {"document": handle}, HTTP_ACCEPT="application/json")


def sent_prompt(emulated: Any) -> str:
    """The text of the last user turn the provider received."""
    call = [r for r in emulated.requests if r.endpoint == "model"][-1]
    messages = call.json["messages"]
    last = [m for m in messages if m["role"] == "user"][-1]
    content = last["content"]
    return content if isinstance(content, str) else json.dumps(content)


def ask(owner: Any, slug: str, data: bytes, question: str, name: str = "report.pdf"
        ) -> tuple[Conversation, Message, str]:
    client = signed_in(owner)
    response = upload(client, data, name)
    assert response.status_code == 201, response.content
    document_id = response.json()["id"]
    conversation = services.conversation_create(owner, model=model(slug))
    response = post_message(client, conversation, question, documents=[document_id])
    assert response.status_code == 201, response.content
    # The reply the page inserts shows the prompt's document (a prompt without files is
    # rendered without reading them; this one has one).
    assert f'data-document="{document_id}"' in response.json()["user"]["html"]
    answer = Message.objects.get(pk=response.json()["assistant"]["id"])
    conversation.refresh_from_db()
    page = client.get(f"/c/{conversation.pk}/").content.decode()
    return conversation, answer, page


def test_a_user_drops_a_40_page_pdf_and_asks_about_page_31_and_the_answer_quotes_it(
        emulated: Any, owner: Any, media: Path) -> None:
    # Qianfan's Llama 3 70B reads 4,800 characters: the report (32,000) does not fit.
    _conversation, answer, page = ask(owner, "llama-3-70b", report(40),
                                     "What does page 31 say?")
    document = Document.objects.get()
    assert document.status == "ready" and document.pages == 40
    assert DocumentPassage.objects.filter(document=document).count() >= 40
    sent = sent_prompt(emulated)
    assert "Quinoa Ridge" in sent  # page 31's text was sent...
    assert "valley 5 counted" not in sent  # ...not the whole report
    assert sent.rstrip().endswith("What does page 31 say?")
    # The emulator echoes the start of what it read: page 31's quote leads.
    assert answer.status == "complete"
    assert "page 31" in answer.content
    assert "Used pages 30\u201332 of report.pdf" in page  # the named page and its neighbours
    assert "40 pages" in page  # the chip on the prompt


def test_without_a_page_number_full_text_ranking_finds_the_passage(
        emulated: Any, owner: Any, media: Path) -> None:
    _conversation, answer, page = ask(owner, "llama-3-70b", report(40),
                                      "Where did the alpaca shearing festival move?")
    sent = sent_prompt(emulated)
    assert sent.index("Quinoa Ridge") < 200  # the best passage first
    assert "page 31" in answer.content
    assert "Used page" in page


def test_a_document_that_fits_is_sent_whole_and_the_page_says_so(
        emulated: Any, owner: Any, media: Path) -> None:
    notes = b"# Notes\n\nThe llama is named Kuzco.\n<script>alert(1)</script>\n"
    _conversation, answer, page = ask(owner, "llama-3.2-3b", notes, "What is the llama called?",
                                      name="notes.md")
    sent = sent_prompt(emulated)
    assert "The llama is named Kuzco." in sent
    assert "Used all of notes.md" in page
    assert answer.status == "complete"
    assert "<script>alert(1)</script>" not in page  # never rendered as HTML
    assert Document.objects.get().mime_type == "text/markdown"


def test_a_chinese_text_in_gb18030_is_read(owner: Any, media: Path, transactional_db: Any) -> None:
    response = upload(signed_in(owner), "羊驼的名字叫小白。\n".encode("gb18030"), "notes.txt")
    assert response.status_code == 201
    assert Document.objects.get().text.strip() == "羊驼的名字叫小白。"


def encrypted_pdf() -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf([["Secret."]]))))
    writer.encrypt("secret")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def docm() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("[Content_Types].xml", '<Types><Override ContentType="application/'
                         'vnd.ms-word.document.macroEnabled.main+xml"/></Types>')
        archive.writestr("word/document.xml", "<document/>")
        archive.writestr("word/vbaProject.bin", b"\x00macro")
    return out.getvalue()


@pytest.mark.parametrize(("data", "name", "code"), [
    (b"\x00\x01\x02\xff" * 100, "data.bin", "unsupported_format"),
    (b"   \n", "empty.txt", "empty"),
    (b"%PDF-1.4 broken", "broken.pdf", "unreadable"),
    (None, "locked.pdf", "encrypted"),
    (None, "macro.docm", "macros"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "photo.txt", "unsupported_format"),
])
def test_a_refused_document_gets_a_clear_error_and_nothing_is_stored(
        owner: Any, media: Path, transactional_db: Any, data: bytes | None, name: str,
        code: str) -> None:
    if data is None:
        data = encrypted_pdf() if code == "encrypted" else docm()
    response = upload(signed_in(owner), data, name)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert not Document.objects.exists()
    assert not any(media.rglob("*.bin"))


def test_too_large_and_too_many_pages_are_refused(owner: Any, media: Path, transactional_db: Any,
                                                  settings: Any) -> None:
    settings.DOCUMENT_MAX_PAGES = 30
    response = upload(signed_in(owner), report(40))
    assert response.json()["error"]["code"] == "too_many_pages"
    settings.DOCUMENT_MAX_BYTES = 1000
    response = upload(signed_in(owner), b"a" * 1001, "big.txt")
    assert response.json()["error"]["code"] == "too_large"
    assert not Document.objects.exists()


def test_a_pdf_with_javascript_is_read_as_text_and_its_script_never_followed(
        owner: Any, media: Path, transactional_db: Any) -> None:
    data = make_pdf([["Plain page text."]],
                    extra_catalog="/OpenAction << /S /JavaScript /JS (app.alert(1)) >> ")
    response = upload(signed_in(owner), data, "script.pdf")
    assert response.status_code == 201
    document = Document.objects.get()
    assert document.status == "ready" and "Plain page text." in document.text
    file = signed_in(owner).get(f"/documents/{document.pk}/")
    assert file["Content-Type"] == "application/octet-stream"
    assert file["X-Content-Type-Options"] == "nosniff"
    assert file["Content-Disposition"].startswith("attachment;")


def test_a_pdf_without_a_text_layer_fails_extraction_with_a_reason(
        owner: Any, media: Path, transactional_db: Any) -> None:
    response = upload(signed_in(owner), make_pdf([[]]), "scan.pdf")
    assert response.status_code == 201
    document = Document.objects.get()
    assert document.status == "failed" and document.error_code == "no_text"
    status = signed_in(owner).get(f"/documents/{document.pk}/status/").json()
    assert status["status"] == "failed" and "text layer" in status["error"]


def test_documents_follow_the_conversation_access(
        emulated: Any, owner: Any, member: Any, outsider: Any, media: Path) -> None:
    team = Group.objects.create(name="llamas")
    owner.groups.add(team)
    member.groups.add(team)
    conversation, _answer, _page = ask(owner, "llama-3.2-3b", b"Shared notes.", "Summarise",
                                       name="notes.txt")
    conversation.team = team
    conversation.save()
    document = Document.objects.get()
    assert signed_in(member).get(f"/documents/{document.pk}/").status_code == 200
    assert signed_in(outsider).get(f"/documents/{document.pk}/").status_code == 404
    assert signed_in(outsider).get(f"/documents/{document.pk}/status/").status_code == 404
    assert "notes.txt" in signed_in(member).get(f"/c/{conversation.pk}/").content.decode()


def test_someone_elses_or_a_sent_document_cannot_be_attached_or_discarded(
        emulated: Any, owner: Any, outsider: Any, media: Path) -> None:
    theirs = upload(signed_in(outsider), b"Private.", "private.txt").json()["id"]
    conversation = services.conversation_create(owner, model=model("llama-3.2-3b"))
    response = post_message(signed_in(owner), conversation, "Read it", documents=[theirs])
    assert response.status_code == 400
    assert not Message.objects.filter(conversation=conversation).exists()
    assert Document.objects.get(pk=theirs).message_id is None
    assert signed_in(owner).post(f"/documents/{theirs}/discard/").status_code == 404
    response = post_message(signed_in(owner), conversation, "Read it", documents=["nope"])
    assert response.status_code == 400


def test_uploading_needs_a_csrf_token_and_a_signed_in_user(owner: Any, media: Path,
                                                           transactional_db: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert upload(client, b"text", "a.txt").status_code == 403
    assert upload(Client(), b"text", "a.txt").status_code in (302, 401, 403)
    assert not Document.objects.exists()


def test_export_includes_the_text_and_deleting_the_conversation_removes_the_file(
        emulated: Any, owner: Any, media: Path) -> None:
    conversation, _answer, _page = ask(owner, "llama-3.2-3b", b"Line one.\nLine two.",
                                       "Summarise", name="notes.txt")
    data = transfer.export_data(conversation)
    documents = [d for m in data["messages"] for d in m["documents"]]
    assert documents == [{"name": "notes.txt", "mime_type": "text/plain", "pages": None,
                          "size": 19, "sha256": documents[0]["sha256"], "status": "ready",
                          "text": "Line one.\nLine two."}]
    assert "    Line two." in transfer.export_markdown(conversation)
    stored = list(media.rglob("*.bin"))
    assert len(stored) == 1
    Conversation.objects.filter(pk=conversation.pk).delete()
    assert not Document.objects.exists()
    assert not any(media.rglob("*.bin"))


def test_ranking_prefers_named_pages_then_full_text(db: Any, owner: Any) -> None:
    document = Document.objects.create(owner=owner, mime_type="text/plain", size=1, sha256="x",
                                       display_name="r.pdf", status="ready")
    passages = [DocumentPassage.objects.create(document=document, seq=i, page=i + 1, text=t)
                for i, t in enumerate(["about goats", "llama wool prices", "weather"])]
    assert next(p.page for p in context.rank(passages, "wool prices?")) == 2
    assert next(p.page for p in context.rank(passages, "what is on page 3?")) == 3
    assert next(p.page for p in context.rank(passages, "第1页")) == 1
    assert context.ranges([30, 31, 32, 35]) == "30\u201332, 35"


def test_extraction_runs_once(owner: Any, media: Path, transactional_db: Any) -> None:
    upload(signed_in(owner), b"Once.", "once.txt")
    document = Document.objects.get()
    assert store.extract(str(document.pk)) == "skipped"
    assert DocumentPassage.objects.filter(document=document).count() == 1
    assert uuid.UUID(str(document.pk))


def test_the_page_says_which_parts_were_used_in_chinese_too(
        emulated: Any, owner: Any, media: Path) -> None:
    conversation, _answer, _page = ask(owner, "llama-3-70b", report(40), "第31页说了什么\uff1f")
    client = signed_in(owner)
    client.cookies["django_language"] = "zh-hans"
    page = client.get(f"/c/{conversation.pk}/").content.decode()
    assert "已使用 report.pdf 的第 30\u201332 页" in page
    assert "40 页" in page


def test_a_share_link_shows_the_chip_to_readers_without_the_file(
        emulated: Any, owner: Any, outsider: Any, media: Path) -> None:
    conversation, _answer, _page = ask(owner, "llama-3.2-3b", b"Shared notes.", "Summarise",
                                       name="notes.txt")
    share = links.create_share(owner, conversation)
    html = signed_in(outsider).get(f"/s/{share.token}/").content.decode()
    assert "notes.txt" in html and "Used all of notes.txt" in html
    document = Document.objects.get()
    assert f"/documents/{document.pk}/" not in html  # no link to the file itself
    assert signed_in(outsider).get(f"/documents/{document.pk}/").status_code == 404


def docx(paragraphs: list[str]) -> bytes:
    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    body = "".join(f"<w:p><w:r><w:t>{p}</w:t></w:r></w:p>" for p in paragraphs)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("[Content_Types].xml", '<Types><Override ContentType="application/'
                         'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"'
                         '/></Types>')
        archive.writestr("word/document.xml",
                         f'<w:document xmlns:w="{w}"><w:body>{body}</w:body></w:document>')
        archive.writestr("word/_rels/document.xml.rels",
                         '<Relationships><Relationship TargetMode="External" '
                         'Target="http://127.0.0.1:9/leak"/></Relationships>')
    return out.getvalue()


def test_a_docx_is_read_paragraph_by_paragraph_and_its_links_not_followed(
        owner: Any, media: Path, transactional_db: Any) -> None:
    response = upload(signed_in(owner), docx(["First paragraph.", "Second &amp; last."]),
                      "memo.docx")
    assert response.status_code == 201
    document = Document.objects.get()
    assert document.mime_type.endswith("wordprocessingml.document")
    assert document.text == "First paragraph.\nSecond & last."


def test_the_celery_task_extracts_a_pending_document(owner: Any, media: Path,
                                                     transactional_db: Any) -> None:
    name = store.default_storage.save("documents/ab/test.bin",
                                      store.ContentFile(b"Task text."))
    document = Document.objects.create(owner=owner, file=name, mime_type="text/plain", size=10,
                                       sha256="x")
    assert extract_document(str(document.pk)) == "ready"
    document.refresh_from_db()
    assert document.text == "Task text." and document.status == "ready"


def test_a_document_uploaded_but_never_sent_is_removed_after_the_grace_period(
        owner: Any, media: Path, transactional_db: Any) -> None:
    upload(signed_in(owner), b"Forgotten.", "old.txt")
    Document.objects.update(created_at=timezone.now() - timedelta(hours=48))
    upload(signed_in(owner), b"Fresh.", "new.txt")
    assert list(Document.objects.values_list("display_name", flat=True)) == ["new.txt"]
    assert len(list(media.rglob("*.bin"))) == 1


def test_a_long_utf8_text_with_multibyte_characters_is_accepted(
        owner: Any, media: Path, transactional_db: Any) -> None:
    text = ("羊驼" * 400_000 + "\n").encode()  # 2.4 MB of three-byte characters
    response = upload(signed_in(owner), text, "long.txt")
    assert response.status_code == 201, response.content
    document = Document.objects.get()
    assert document.status == "ready" and document.text.strip() == "羊驼" * 400_000


def test_an_exported_conversation_imports_with_its_documents_text(
        emulated: Any, owner: Any, member: Any, media: Path) -> None:
    conversation, _answer, _page = ask(owner, "llama-3.2-3b", b"Kuzco is the llama.",
                                       "Who?", name="notes.txt")
    raw = json.dumps(transfer.export_data(conversation)).encode()
    imported = transfer.import_conversation(member, raw)
    document = Document.objects.get(conversation=imported)
    assert document.owner == member and document.display_name == "notes.txt"
    assert document.text == "Kuzco is the llama." and document.status == "ready"
    assert document.message is not None and document.message.role == "user"


def test_a_pdf_with_an_embedded_file_a_launch_action_and_a_link_is_only_read_as_text(
        owner: Any, media: Path, transactional_db: Any, tmp_path: Path) -> None:
    marker = tmp_path / "launched"
    hostile = (f"/OpenAction << /S /Launch /F ({marker}) >> "
               "/Names << /EmbeddedFiles << /Names [(evil.exe) << /Type /Filespec "
               "/F (evil.exe) >>] >> >> /URI << /Base (http://127.0.0.1:9/) >> ")
    response = upload(signed_in(owner), make_pdf([["Only this text."]], extra_catalog=hostile),
                      "hostile.pdf")
    assert response.status_code == 201
    assert Document.objects.get().text.strip() == "Only this text."
    assert not marker.exists()


@pytest.mark.parametrize(("name", "data", "mime"), [
    ("table.csv", b"name,count\nllama,3\n", "text/csv"),
    ("main.py", b"def main():\n    return 'llama'\n", "text/plain"),
    ("README", b"Plain words.\r\nSecond line.\r\n", "text/plain"),
])
def test_text_markdown_csv_and_code_are_accepted_as_plain_text(
        owner: Any, media: Path, transactional_db: Any, name: str, data: bytes,
        mime: str) -> None:
    assert upload(signed_in(owner), data, name).status_code == 201
    document = Document.objects.get()
    assert document.mime_type == mime and document.status == "ready"
    assert "\r" not in document.text
