"""Real PDFs with a text layer, written by hand (no PDF writer with text is installed):
Helvetica text, one content stream per page, a correct cross-reference table."""

from __future__ import annotations


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(pages: list[list[str]], *, extra_catalog: str = "") -> bytes:
    """A PDF whose page i shows the lines pages[i]. `extra_catalog` is added to the catalog
    dictionary as is (e.g. an /OpenAction with JavaScript)."""
    objects: list[bytes] = []
    count = len(pages)
    font_id = 3
    first_page = 4
    kids = " ".join(f"{first_page + 2 * i} 0 R" for i in range(count))
    objects.append(f"<< /Type /Catalog /Pages 2 0 R {extra_catalog}>>".encode())
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for index, lines in enumerate(pages):
        content_id = first_page + 2 * index + 1
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_id} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode())
        ops = ["BT", "/F1 11 Tf", "14 TL", "72 740 Td"]
        for line in lines:
            ops.append(f"({_escape(line)}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def report(pages: int = 40) -> bytes:
    """A report of `pages` pages; each page says its number and one unique fact."""
    body = []
    for number in range(1, pages + 1):
        lines = [f"Annual report, page {number}.",
                 f"Finding {number}: the herd in valley {number} counted {number * 7} llamas."]
        lines += [f"Filler line {k} about pasture rotation and fencing on page {number}."
                  for k in range(12)]
        body.append(lines)
    body[30] = ["Annual report, page 31.",
                "The alpaca shearing festival moved to Quinoa Ridge in October.",
                *[f"Filler line {k} about shearing schedules and wool grading." for k in range(12)]]
    return make_pdf(body)
