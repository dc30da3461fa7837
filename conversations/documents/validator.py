"""The one place that decides whether uploaded bytes are a document we store, and its text.

No Django import: limits are arguments, so this runs in the web process, a Celery worker and
tests alike. Every refusal is `DocumentRejected(code, message)`; nothing else escapes for
hostile input.

* The kind is decided by content, never by the name: a PDF starts with ``%PDF-``, a DOCX is a
  ZIP holding ``word/document.xml``; anything else must decode as text (UTF-8, UTF-16 with a
  byte-order mark, GB 18030, Windows-1252) without binary control bytes.
* PDF (pypdf): encrypted files are refused; only the text layer of each page is read. Nothing
  in a PDF is run or followed: JavaScript, embedded files, links and forms are never read.
* DOCX: a macro-enabled document (``vbaProject.bin`` or a macro content type, i.e. .docm) is
  refused; only ``word/document.xml`` is read (paragraph text), never external links or
  relationships; its uncompressed size is bounded.
* The text is kept as plain text: it is never rendered as HTML or run.
"""

from __future__ import annotations

import io
import re
import unicodedata
import zipfile
from dataclasses import dataclass
from typing import Final
from xml.etree import ElementTree

from pypdf import PdfReader
from pypdf.errors import PyPdfError

PDF: Final = "application/pdf"
DOCX: Final = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
TEXT_TYPES: Final = {"md": "text/markdown", "markdown": "text/markdown", "csv": "text/csv"}
_W: Final = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_BAD_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


class DocumentRejected(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 20 * 1024 * 1024
    max_pages: int = 500
    max_chars: int = 5_000_000  # extracted text kept at most


@dataclass(frozen=True)
class Checked:
    """What the upload check learned: the type we chose, and the page count of a PDF."""

    mime_type: str
    pages: int | None


def display_name(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in unicodedata.normalize("NFC", base)
                   if unicodedata.category(ch)[0] != "C")
    return base.strip()[:160] or "document"


def _pdf_reader(data: bytes) -> PdfReader:
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        encrypted = reader.is_encrypted
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError,
            RecursionError, OSError):
        raise DocumentRejected("unreadable", "This PDF cannot be read.") from None
    if encrypted:
        raise DocumentRejected("encrypted", "This PDF is encrypted; remove the password and "
                                            "upload it again.")
    return reader


def _docx_xml(data: bytes, limits: Limits) -> bytes:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = set(archive.namelist())
        if "word/document.xml" not in names:
            raise DocumentRejected("unsupported_format", "Only text, Markdown, CSV, source "
                                   "code, PDF and DOCX documents can be attached.")
        types = archive.read("[Content_Types].xml") if "[Content_Types].xml" in names else b""
        if any(n.lower().endswith("vbaproject.bin") for n in names) or b"macroEnabled" in types:
            raise DocumentRejected("macros", "Documents with macros (.docm) are not accepted.")
        info = archive.getinfo("word/document.xml")
        if info.file_size > limits.max_bytes * 5:
            raise DocumentRejected("too_large", "This document is too large.")
        return archive.read("word/document.xml")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, OSError, RuntimeError,
            NotImplementedError, EOFError):
        raise DocumentRejected("unreadable", "This document cannot be read.") from None


def _decode_text(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        candidates: tuple[str, ...] = ("utf-16",)
    else:
        candidates = ("utf-8-sig", "gb18030", "cp1252")
    for encoding in candidates:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if "\x00" in text or len(_BAD_CONTROL.findall(text[:65536])) > 8:
            break  # binary, whatever it decodes as
        return text.replace("\r\n", "\n").replace("\r", "\n")
    raise DocumentRejected("unsupported_format", "Only text, Markdown, CSV, source code, PDF "
                           "and DOCX documents can be attached.")


def check(data: bytes, name: str, limits: Limits) -> Checked:
    """Refuse what we do not store; cheap enough to run while the upload request waits."""
    if len(data) > limits.max_bytes:
        raise DocumentRejected("too_large", "This document is too large.")
    if not data.strip():
        raise DocumentRejected("empty", "This document is empty.")
    if data.startswith(b"%PDF-"):
        reader = _pdf_reader(data)
        try:
            pages = len(reader.pages)
        except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError,
                RecursionError):
            raise DocumentRejected("unreadable", "This PDF cannot be read.") from None
        if pages > limits.max_pages:
            raise DocumentRejected("too_many_pages", f"This PDF has {pages} pages; the limit "
                                                     f"is {limits.max_pages}.")
        return Checked(PDF, pages)
    if data.startswith(b"PK\x03\x04"):
        _docx_xml(data, limits)
        return Checked(DOCX, None)
    _decode_text(data)  # at most max_bytes; a cut could split a character
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return Checked(TEXT_TYPES.get(extension, "text/plain"), None)


def extract(data: bytes, mime_type: str, limits: Limits) -> list[str]:
    """The text of each page (one item for documents without pages)."""
    if mime_type == PDF:
        reader = _pdf_reader(data)
        pages: list[str] = []
        total = 0
        for page in reader.pages[: limits.max_pages]:
            try:
                text = page.extract_text() or ""
            except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError,
                    RecursionError, ZeroDivisionError):
                text = ""
            text = text[: max(0, limits.max_chars - total)]
            total += len(text)
            pages.append(text)
        if not any(p.strip() for p in pages):
            raise DocumentRejected("no_text", "This PDF has no text layer (a scan?).")
        return pages
    if mime_type == DOCX:
        try:
            root = ElementTree.fromstring(_docx_xml(data, limits))
        except ElementTree.ParseError:
            raise DocumentRejected("unreadable", "This document cannot be read.") from None
        paragraphs = ["".join(t.text or "" for t in p.iter(f"{_W}t"))
                      for p in root.iter(f"{_W}p")]
        return ["\n".join(paragraphs)[: limits.max_chars]]
    return [_decode_text(data)[: limits.max_chars]]


def split_passages(pages: list[str], *, paged: bool,
                   size: int = 1500) -> list[tuple[int | None, str]]:
    """(page number or None, text) passages: a page each, long pages cut near `size` chars at
    a paragraph or line break."""
    passages: list[tuple[int | None, str]] = []
    for number, page in enumerate(pages, start=1):
        text = page.strip()
        while text:
            if len(text) <= size:
                cut = len(text)
            else:
                cut = max(text.rfind("\n\n", 0, size), text.rfind("\n", 0, size),
                          text.rfind(" ", 0, size))
                cut = cut if cut > size // 3 else size
            passages.append((number if paged else None, text[:cut].strip()))
            text = text[cut:].strip()
    return [(n, t) for n, t in passages if t]
