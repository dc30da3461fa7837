"""Hostile and ordinary image files, built in memory at test time (no binary blobs in git).

Each builder returns the raw bytes an uploader could send. Some files are made with Pillow,
the hostile ones are assembled byte by byte so they can lie in ways Pillow would never write.
The inspectors at the bottom list a PNG's chunks or a JPEG's segments, so tests can prove that
no metadata survived re-encoding.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable

from PIL import Image, ImageCms, PngImagePlugin

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)

HTML_PAYLOAD = b"<html><body><script>alert(document.cookie)</script></body></html>"
JS_PAYLOAD = b"*/=alert(document.domain);//"
SECRET_TEXT = "SECRET-LOCATION-48.8584N"


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def noise(size: tuple[int, int], mode: str = "RGB", seed: int = 7) -> Image.Image:
    """Deterministic incompressible pixels, so JPEG sizes and truncation points are meaningful."""
    channels = len(Image.new(mode, (1, 1)).getbands())
    count = size[0] * size[1] * channels
    state = seed
    data = bytearray(count)
    for index in range(count):  # small LCG: reproducible without touching global random state
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        data[index] = state >> 23
    return Image.frombytes(mode, size, bytes(data))


# --------------------------------------------------------------------------- raw PNG


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def raw_png(
    width: int,
    height: int,
    rows: bytes,
    *,
    bit_depth: int = 8,
    color_type: int = 2,
    extra_chunks: Iterable[bytes] = (),
) -> bytes:
    """A PNG from already-filtered scanlines (each row starts with its filter byte)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        PNG_MAGIC
        + png_chunk(b"IHDR", header)
        + b"".join(extra_chunks)
        + png_chunk(b"IDAT", zlib.compress(rows, 9))
        + png_chunk(b"IEND", b"")
    )


def png_header_claiming(width: int, height: int) -> bytes:
    """Valid signature and IHDR for a huge image, with a tiny IDAT: a few dozen bytes on disk."""
    return raw_png(width, height, b"\x00" * 64)


def png_16bit_rgba(size: tuple[int, int] = (6, 4)) -> bytes:
    width, height = size
    pixel = struct.pack(">HHHH", 0xFFFF, 0x8000, 0x0000, 0x8000)  # orange-ish, half transparent
    rows = b"".join(b"\x00" + pixel * width for _ in range(height))
    return raw_png(width, height, rows, bit_depth=16, color_type=6)


def png_bad_crc() -> bytes:
    good = encode(Image.new("RGB", (8, 8), RED), "PNG")
    at = good.index(b"IDAT") + 4  # first byte of IDAT payload; its CRC no longer matches
    return good[:at] + bytes([good[at] ^ 0xFF]) + good[at + 1 :]


# --------------------------------------------------------------------------- ordinary files


def png_1x1() -> bytes:
    return encode(Image.new("RGB", (1, 1), RED), "PNG")


def jpeg_1x1() -> bytes:
    return encode(Image.new("RGB", (1, 1), RED), "JPEG")


def png_1xn(n: int = 500) -> bytes:
    return encode(Image.new("RGB", (1, n), GREEN), "PNG")


def png_nx1(n: int = 500) -> bytes:
    return encode(Image.new("L", (n, 1), 200), "PNG")


def png_rgba() -> bytes:
    return encode(Image.new("RGBA", (10, 6), (*RED, 128)), "PNG")


def png_palette_transparent() -> bytes:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([*GREEN, *RED] + [0] * 762)
    return encode(image, "PNG", transparency=0)


def png_bilevel() -> bytes:
    return encode(Image.new("1", (16, 9), 1), "PNG")


def jpeg_gray() -> bytes:
    return encode(Image.new("L", (12, 7), 90), "JPEG")


def png_16bit_gray() -> bytes:
    return encode(Image.new("I;16", (8, 8), 0x8000), "PNG")


def jpeg_cmyk() -> bytes:
    return encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)


def tiff_rgb() -> bytes:
    return encode(Image.new("RGB", (20, 10), BLUE), "TIFF", compression="tiff_lzw")


def tiff_float() -> bytes:
    return encode(Image.new("F", (5, 5), 0.5), "TIFF")


def bmp_rgb() -> bytes:
    return encode(Image.new("RGB", (9, 5), GREEN), "BMP")


def ico_rgba() -> bytes:
    return encode(Image.new("RGBA", (32, 32), (*BLUE, 255)), "ICO", sizes=[(16, 16), (32, 32)])


def webp_rgb() -> bytes:
    return encode(Image.new("RGB", (24, 16), RED), "WEBP", quality=90)


def webp_rgba() -> bytes:
    return encode(Image.new("RGBA", (24, 16), (*GREEN, 100)), "WEBP", lossless=True)


def webp_animated() -> bytes:
    frames = [Image.new("RGB", (16, 16), color) for color in (RED, GREEN, BLUE)]
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)


def jpeg2000() -> bytes:
    return encode(Image.new("RGB", (16, 12), BLUE), "JPEG2000")


def gif_animated() -> bytes:
    frames = [Image.new("RGB", (12, 12), color) for color in (RED, GREEN, BLUE)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def apng_animated() -> bytes:
    frames = [Image.new("RGBA", (10, 10), (*color, 255)) for color in (RED, GREEN, BLUE)]
    return encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50)


def at_size(target: int) -> bytes:
    """A valid PNG padded with trailing zeros to exactly ``target`` bytes."""
    image = png_1x1()
    return image + b"\x00" * (target - len(image))


# --------------------------------------------------------------------------- metadata leaks


def jpeg_exif_gps_orientation6() -> bytes:
    """Left half red, right half blue, stored sideways with orientation 6 and every leak we know.

    Displayed upright it is 20 wide, 40 tall: red on top, blue below.
    """
    return jpeg_with_every_leak(orientation=6)


def jpeg_with_every_leak(orientation: int = 1) -> bytes:
    """A 40x20 JPEG (left red, right blue) with EXIF (GPS, camera make/model, date), XMP with GPS,
    an ICC profile, a JPEG comment and an IPTC (Photoshop APP13) block."""
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: rotate 90 degrees clockwise to display
    exif[0x010F] = "LeakyCam"  # Make
    exif[0x0110] = "Model-X-SECRET"  # Model
    exif_ifd = exif.get_ifd(0x8769)
    exif_ifd[0x9003] = "2024:05:01 12:34:56"  # DateTimeOriginal
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (48.0, 51.0, 30.0)
    gps[3] = "E"
    gps[4] = (2.0, 17.0, 40.0)
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        b'xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="48,51.5N"/>'
        b"</rdf:RDF></x:xmpmeta>"
    )
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode(
        image,
        "JPEG",
        quality=95,
        exif=exif.tobytes(),
        xmp=xmp,
        icc_profile=icc,
        comment=SECRET_TEXT.encode(),
    )
    iptc = b"Photoshop 3.0\x008BIM\x04\x04\x00\x00" + struct.pack(">I", 20) + b"\x1c\x02\x78"
    iptc += struct.pack(">H", 15) + SECRET_TEXT[:15].encode() + b"\x00\x00"
    app13 = b"\xff\xed" + struct.pack(">H", len(iptc) + 2) + iptc
    return data[:2] + app13 + data[2:]


def png_with_text_chunks() -> bytes:
    """RGBA PNG carrying tEXt, zTXt, iTXt, eXIf and iCCP: none may survive."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", SECRET_TEXT)
    info.add_text("Location", SECRET_TEXT, zip=True)
    info.add_itxt("Description", SECRET_TEXT, lang="en", tkey="Description")
    exif = Image.Exif()
    exif[0x010F] = "LeakyCam"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image = Image.new("RGBA", (8, 8), (*GREEN, 200))
    return encode(image, "PNG", pnginfo=info, exif=exif.tobytes(), icc_profile=icc)


# --------------------------------------------------------------------------- polyglots, non-images


def html_named_png() -> bytes:
    return b"<!DOCTYPE html>" + HTML_PAYLOAD


def png_html_polyglot() -> bytes:
    """A real PNG with an HTML page after IEND and inside a tEXt chunk."""
    base = encode(Image.new("RGB", (8, 8), RED), "PNG")
    text = png_chunk(b"tEXt", b"Comment\x00" + HTML_PAYLOAD)
    at = base.index(b"IDAT") - 4
    return base[:at] + text + base[at:] + HTML_PAYLOAD


def gif_js_polyglot() -> bytes:
    """A small valid GIF with a script after the trailer: decodes fine, the script must go."""
    return encode(Image.new("P", (4, 4), 0), "GIF") + b"\n" + JS_PAYLOAD


def gif_js_polyglot_classic() -> bytes:
    """The classic 'GIF89a/*' file that is also valid JavaScript: width bytes are '/*'.

    That makes the logical screen 10799 pixels wide, past any sane max_side.
    """
    screen = b"/*" + struct.pack("<H", 10) + b"\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
    frame = b"," + struct.pack("<HHHH", 0, 0, 1, 1) + b"\x00" + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + frame + JS_PAYLOAD + b";"


def gif_many_frames(count: int = 10_000) -> bytes:
    """A 1x1 GIF with ``count`` frames, assembled by hand (Pillow would merge equal frames)."""
    header = b"GIF89a" + struct.pack("<HH", 1, 1) + b"\x80\x00\x00" + b"\xff\x00\x00\x00\x00\xff"
    loop = b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    frames = []
    for index in range(count):
        control = b"!\xf9\x04\x00\x01\x00\x00\x00"  # 10 ms per frame
        pixel = b"\x02\x02\x44\x01\x00" if index % 2 == 0 else b"\x02\x02\x4c\x01\x00"
        frames.append(control + b"," + struct.pack("<HHHH", 0, 0, 1, 1) + b"\x00" + pixel)
    return header + loop + b"".join(frames) + b";"


def svg_with_script() -> bytes:
    return (
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        b"<script>alert(1)</script><rect width='10' height='10'/></svg>"
    )


def pdf_bytes() -> bytes:
    return b"%PDF-1.7\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


def psd_header() -> bytes:
    """Photoshop signature + header for a 64x64 RGB document (a format outside the allow-list)."""
    header = b"8BPS" + struct.pack(">H", 1) + b"\x00" * 6 + struct.pack(">HIIHH", 3, 64, 64, 8, 3)
    return header + b"\x00" * 64


def fits_header() -> bytes:
    """A FITS primary header (the format of Pillow's GZIP-bomb advisory GHSA-whj4-6x5x-4v2j)."""
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                    8",
        "NAXIS   =                    2",
        "NAXIS1  =                   64",
        "NAXIS2  =                   64",
        "END",
    ]
    header = "".join(card.ljust(80) for card in cards).ljust(2880)
    return header.encode("ascii") + b"\x00" * 4096


def truncated_jpeg() -> bytes:
    data = encode(noise((64, 64)), "JPEG", quality=95)
    return data[: len(data) * 6 // 10]


def truncated_png() -> bytes:
    data = encode(noise((64, 64)), "PNG")
    return data[: len(data) // 2]


def png_zero_width() -> bytes:
    return raw_png(0, 10, b"")


def gif_zero_size() -> bytes:
    screen = struct.pack("<HH", 0, 0) + b"\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
    frame = b"," + struct.pack("<HHHH", 0, 0, 0, 0) + b"\x00" + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + frame + b";"


# --------------------------------------------------------------------------- bombs


def bomb_png_30000() -> bytes:
    return png_header_claiming(30_000, 30_000)


def bomb_png_real(side: int = 3000) -> bytes:
    """A genuine, fully decodable all-black PNG: ~9 MP from a file of a few kilobytes."""
    return encode(Image.new("L", (side, side), 0), "PNG")


def bomb_ico_embedded_png() -> bytes:
    """An ICO whose directory says 16x16 while its embedded PNG header says 7000x7000."""
    embedded = png_header_claiming(7000, 7000)
    directory = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(embedded), 6 + 16)
    return directory + entry + embedded


def webp_header_claiming(width: int, height: int) -> bytes:
    """An extended (VP8X) WebP header declaring a canvas, followed by no image data at all."""
    vp8x = (
        b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    )
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


def bomb_webp_real(side: int = 3000) -> bytes:
    """A genuine lossless all-black WebP: ~9 MP from a file of a few hundred bytes."""
    return encode(Image.new("RGB", (side, side), 0), "WEBP", lossless=True)


# --------------------------------------------------------------------------- inspectors


def png_chunk_types(data: bytes) -> list[str]:
    assert data.startswith(PNG_MAGIC)
    kinds, at = [], len(PNG_MAGIC)
    while at + 8 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kinds.append(data[at + 4 : at + 8].decode("latin-1"))
        at += 12 + length
    return kinds


def jpeg_marker_names(data: bytes) -> list[str]:
    """Markers before the first scan, e.g. ['APP0', 'DQT', 'SOF0', 'DHT', 'SOS']."""
    assert data.startswith(JPEG_MAGIC)
    names, at = [], 2
    while at + 4 <= len(data):
        marker = data[at + 1]
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        names.append(_jpeg_marker_name(marker))
        if marker == 0xDA:
            break
        at += 2 + length
    return names


def _jpeg_marker_name(marker: int) -> str:
    if 0xE0 <= marker <= 0xEF:
        return f"APP{marker - 0xE0}"
    if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
        return f"SOF{marker - 0xC0}"
    named = {0xC4: "DHT", 0xDB: "DQT", 0xDD: "DRI", 0xDA: "SOS", 0xFE: "COM", 0xCC: "DAC"}
    return named.get(marker, f"0x{marker:02X}")
