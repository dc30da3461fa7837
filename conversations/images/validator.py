"""The one place that decides whether uploaded bytes are an image we store, and how we serve it.

Everything an upload goes through lives here (threats T03, T11, T12, T24):

* Size is checked on the raw byte count before any decoder runs. A file object is read for at
  most ``max_bytes + 1`` bytes, so an oversized upload is never pulled into memory whole.
* The format is decided by content, never by name or declared type: only the decoders in
  ``ALLOWED_FORMATS`` may run. SVG, HTML, PDF, PSD, FITS, AVIF, ... are ``unsupported_format``.
* Dimensions are checked against ``ImageLimits`` from the header, before ``load()`` allocates
  pixel memory; ICO and WebP headers are peeked at even before ``Image.open``, because those two
  plugins allocate pixels while opening. Pillow's ``DecompressionBombWarning`` is promoted to an
  error for the duration of the call (the global ``Image.MAX_IMAGE_PIXELS`` is left alone), so
  an image between 1x and 2x Pillow's own limit cannot slip through as a mere warning; a
  ``max_pixels`` above Pillow's limit is therefore capped at it.
* ``verify()`` runs first; the file is then re-opened and ``load()``-ed. Truncated files are
  refused because ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never turned on here.
* Only the first frame is kept (animated GIF/WebP/APNG, multi-page TIFF, ICO's largest icon).
* EXIF orientation is applied to the pixels, then every piece of metadata is dropped: EXIF (GPS,
  device, thumbnail), XMP, IPTC, ICC, JPEG comments and PNG text chunks. ICC profiles are dropped
  without a colour transform on purpose: parsing an attacker's profile with LittleCMS is extra
  attack surface, and the cost is slightly flatter colours on wide-gamut (e.g. Display P3) photos.
* The pixels are re-encoded: alpha, palette or transparency -> PNG; everything else -> JPEG q90.
  Bytes after the image's end (an appended HTML page or script, a phone's embedded video) are not
  refused: they are dropped, because the output is produced by our encoder from pixels alone. The
  stored bytes are therefore always plain raster data with a type we chose.

No Django import: limits are arguments, so this runs in the web process, a Celery worker and
tests alike. Every decoding failure becomes ``ImageRejected``; nothing else escapes for hostile
input (programming errors such as passing a ``str`` still raise ``TypeError``).

Memory: an accepted image costs one decoded frame (4 bytes per pixel for RGB, ~160 MiB at the
default 40 MP), two while it is rotated or converted. Refused bombs cost nothing measurable.

Concurrency note: ``warnings.catch_warnings`` swaps process-global state (Python 3.11), so under
threads the promoted warning is only defence in depth, and other threads' warnings may be muted
while a decode runs. The real guard is the explicit size check against ``ImageLimits`` before
``load()``, which is thread-safe.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import hmac
import io
import logging
import math
import re
import struct
import time
import unicodedata
import uuid
import warnings
from dataclasses import dataclass, field
from typing import BinaryIO, Final, Literal

from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

ALLOWED_FORMATS: Final = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "ICO", "JPEG2000", "GIF")

_MB: Final = 1024 * 1024
_KB: Final = 1024
_JPEG_QUALITY: Final = 90
# Quality steps tried before shrinking a JPEG to meet a byte limit; below ~70 artefacts show.
_JPEG_FALLBACK_QUALITIES: Final = (80, 70)
_MAX_SHRINK_ROUNDS: Final = 12
_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
_TRANSPOSING_ORIENTATIONS: Final = frozenset(range(2, 9))  # 1 is upright; others are bogus

OutputFormat = Literal["PNG", "JPEG"]
_MIME: Final[dict[str, tuple[str, str]]] = {
    "PNG": ("image/png", "png"),
    "JPEG": ("image/jpeg", "jpg"),
}

# Leading bytes of the allowed formats. Used only to word a refusal: a file that looks like one
# of our formats but does not decode is "corrupt"; anything else is "unsupported_format".
_ALLOWED_MAGIC: Final = (
    b"\xff\xd8\xff",  # JPEG
    _PNG_MAGIC,
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
    b"II+\x00",  # BigTIFF
    b"MM\x00+",
    b"\x00\x00\x01\x00",  # ICO
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",  # JPEG 2000 (JP2 box)
    b"\xffO\xffQ",  # JPEG 2000 codestream
)


class RejectCode(enum.StrEnum):
    """Why an upload was refused; stable machine codes for the UI and for tests."""

    EMPTY = "empty"
    TOO_LARGE = "too_large"  # byte size over the limit (HTTP 413)
    TOO_MANY_PIXELS = "too_many_pixels"  # width x height over the limit, or a decompression bomb
    DIMENSIONS_TOO_LARGE = "dimensions_too_large"  # one side over max_side
    TOO_SMALL = "too_small"  # a side below min_side (including zero)
    UNSUPPORTED_FORMAT = "unsupported_format"  # not one of ALLOWED_FORMATS by content
    CORRUPT = "corrupt"  # looks like an allowed format but does not decode cleanly


class ImageRejected(ValueError):
    """An upload we refuse. ``message`` is safe to show the uploader.

    ``params`` holds the numbers the message was built from, so a translation layer can rebuild
    the sentence in another language from ``code`` + ``params``.
    """

    def __init__(self, code: RejectCode, message: str, **params: object) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.params = params

    def __repr__(self) -> str:
        return f"ImageRejected(code={self.code.value!r}, message={self.message!r})"


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 10 * _MB
    max_pixels: int = 40_000_000
    max_side: int = 8192
    min_side: int = 1

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_side", "min_side"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ImageLimits.{name} must be a positive int")
        if self.min_side > self.max_side:
            raise ValueError("ImageLimits.min_side must not exceed max_side")


@dataclass(frozen=True)
class CleanImage:
    """Re-encoded, metadata-free image bytes that are safe to store, serve and send on."""

    data: bytes = field(repr=False)  # never dump megabytes into a log line
    mime_type: str
    extension: str
    width: int
    height: int
    source_format: str
    sha256: str

    def __post_init__(self) -> None:
        if (self.mime_type, self.extension) not in _MIME.values():
            raise ValueError("CleanImage must be image/png+png or image/jpeg+jpg")


# --------------------------------------------------------------------------- validation


def validate_image(data: bytes | BinaryIO, limits: ImageLimits = ImageLimits()) -> CleanImage:
    """Return a re-encoded copy of ``data`` or raise ``ImageRejected``.

    A file object is read from its current position, for at most ``limits.max_bytes + 1`` bytes.
    Errors raised by the file object itself (e.g. a dropped upload) propagate unchanged.
    """
    raw = _read_limited(data, limits.max_bytes)
    limits = _within_pillow_guard(limits)
    try:
        return _decode_and_reencode(raw, limits)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(None, limits) from None
    except UnidentifiedImageError:
        raise _unidentified(raw) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, TypeError):
        # The same family Image.open itself reads as "malformed input" (a TypeError comes e.g.
        # from a TIFF whose strip offsets are rationals).
        raise _corrupt() from None
    except Exception as exc:
        # A decoder bug we have not met yet. Refuse rather than 500; log the type and a digest
        # only, never the bytes or the exception text (which can quote file content).
        logger.warning(
            "unexpected %s while decoding an upload of %d bytes (sha256 %s)",
            type(exc).__name__,
            len(raw),
            hashlib.sha256(raw).hexdigest()[:16],
        )
        raise _corrupt() from None


def _within_pillow_guard(limits: ImageLimits) -> ImageLimits:
    # Above Image.MAX_IMAGE_PIXELS the promoted warning refuses the file anyway; using the lower
    # figure everywhere keeps header pre-checks effective and the refusal message truthful.
    pillow_max = Image.MAX_IMAGE_PIXELS
    if pillow_max is None or limits.max_pixels <= pillow_max:
        return limits
    return dataclasses.replace(limits, max_pixels=int(pillow_max))


def _read_limited(data: bytes | BinaryIO, max_bytes: int) -> bytes:
    if isinstance(data, bytes | bytearray | memoryview):
        size = len(data)
        if size > max_bytes:
            raise _too_large(size, max_bytes, exact=True)
        raw = bytes(data)
    else:
        raw = _read_at_most(data, max_bytes + 1)
        if len(raw) > max_bytes:
            raise _too_large(len(raw), max_bytes, exact=False)
    if not raw:
        raise ImageRejected(RejectCode.EMPTY, "This file is empty.")
    return raw


def _read_at_most(stream: BinaryIO, limit: int) -> bytes:
    # read(n) may return fewer bytes than asked (sockets, raw files), so loop until EOF or limit.
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = stream.read(min(remaining, _MB))
        if not chunk:
            break
        if not isinstance(chunk, bytes | bytearray):
            raise TypeError("validate_image needs a binary file object")
        chunks.append(bytes(chunk))
        remaining -= len(chunk)
    return b"".join(chunks)


def _decode_and_reencode(raw: bytes, limits: ImageLimits) -> CleanImage:
    with warnings.catch_warnings():
        # Decoder chatter about odd files ("Corrupt EXIF data", ...) is not actionable and must
        # not turn into exceptions when a deployment runs with -W error; only the bomb warning
        # changes the outcome, and it must always be an error.
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        source_format = _verify(raw, limits)
        pixels = _load_first_frame(raw, limits)
    prepared, fmt = _prepare_pixels(pixels)
    del pixels  # let the decoded original go before encoding allocates more
    data = _encode(prepared, fmt)
    if len(data) > limits.max_bytes:
        # Re-encoding can grow a file (lossy WebP with alpha -> PNG). The stored copy must still
        # respect the limit, so scale it down rather than refuse a valid upload.
        prepared, data = _shrink_to_bytes(prepared, fmt, limits.max_bytes)
    return _clean(data, fmt, prepared.size, source_format)


def _open(raw: bytes, formats: tuple[str, ...] = ALLOWED_FORMATS) -> ImageFile.ImageFile:
    image = Image.open(io.BytesIO(raw), formats=formats)
    if not isinstance(image, ImageFile.ImageFile):  # pragma: no cover - Image.open's contract
        raise UnidentifiedImageError("not an image file")
    return image


def _verify(raw: bytes, limits: ImageLimits) -> str:
    _check_declared_sizes(raw, limits)
    with _open(raw) as probe:
        _check_dimensions(probe.size, limits)
        source_format = probe.format or "unknown"
        probe.verify()
    return source_format


def _load_first_frame(raw: bytes, limits: ImageLimits) -> Image.Image:
    """Decode frame 0 and return it upright.

    Peak memory is one decoded frame, two while a rotation is applied. Not a ``with`` block:
    the unrotated image is returned as is (a copy would double memory for the common case), and
    closing would free its pixels. The source is an in-memory buffer, so nothing leaks.
    """
    image = _open(raw)
    _check_dimensions(image.size, limits)
    image.load()
    # ICO can report a different size once its embedded frame is decoded.
    _check_dimensions(image.size, limits)
    upright = _upright(image)
    if upright is not image:
        image.close()  # free the unrotated pixels before conversion allocates again
    return upright


def _upright(image: Image.Image) -> Image.Image:
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation in _TRANSPOSING_ORIENTATIONS:
            return ImageOps.exif_transpose(image)
    except Exception as exc:
        # Malformed EXIF must not cost the user their photo: keep the pixels as stored.
        logger.info("ignoring unreadable EXIF orientation (%s)", type(exc).__name__)
    return image


def _check_dimensions(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width < limits.min_side or height < limits.min_side:
        raise ImageRejected(
            RejectCode.TOO_SMALL,
            f"This image is {width} x {height} pixels; each side must be at least "
            f"{limits.min_side} pixel{'s' if limits.min_side != 1 else ''}.",
            width=width,
            height=height,
            min_side=limits.min_side,
        )
    if width > limits.max_side or height > limits.max_side:
        raise ImageRejected(
            RejectCode.DIMENSIONS_TOO_LARGE,
            f"This image is {width} x {height} pixels; each side may be at most "
            f"{limits.max_side} pixels.",
            width=width,
            height=height,
            max_side=limits.max_side,
        )
    if width * height > limits.max_pixels:
        raise _too_many_pixels((width, height), limits)


def _check_declared_sizes(raw: bytes, limits: ImageLimits) -> None:
    """Check sizes that Pillow would act on inside ``Image.open`` itself.

    Two allowed plugins allocate pixel memory while opening, before we can look at ``size``:
    ICO decodes its largest icon, and WebP's decoder allocates the whole canvas. Pillow guards
    both only with its global limit (about 89 MP, 179 MP for WebP), so peek at their headers.
    """
    if raw.startswith(b"\x00\x00\x01\x00"):
        _check_ico_frames(raw, limits)
    elif raw.startswith(b"RIFF") and raw[8:12] == b"WEBP":
        size = _webp_canvas_size(raw)
        if size is not None:
            _check_dimensions(size, limits)


def _webp_canvas_size(raw: bytes) -> tuple[int, int] | None:
    # Same three header layouts libwebp reads: extended, lossy and lossless.
    chunk = raw[12:16]
    if chunk == b"VP8X" and len(raw) >= 30:
        width = int.from_bytes(raw[24:27], "little") + 1
        return width, int.from_bytes(raw[27:30], "little") + 1
    if chunk == b"VP8 " and len(raw) >= 30 and raw[23:26] == b"\x9d\x01\x2a":
        width = int.from_bytes(raw[26:28], "little") & 0x3FFF
        return width, int.from_bytes(raw[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and len(raw) >= 25 and raw[20] == 0x2F:
        bits = int.from_bytes(raw[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _check_ico_frames(raw: bytes, limits: ImageLimits) -> None:
    """Check every icon's own header: ICO's directory says <=256 px, the embedded PNG may not."""
    count = int.from_bytes(raw[4:6], "little")
    for index in range(count):
        entry = raw[6 + 16 * index : 22 + 16 * index]
        if len(entry) < 16:
            return  # a short directory is Pillow's to refuse
        offset = int.from_bytes(entry[12:16], "little")
        size = _embedded_icon_size(raw[offset : offset + 24])
        if size is not None:
            _check_dimensions(size, limits)


def _embedded_icon_size(head: bytes) -> tuple[int, int] | None:
    if head.startswith(_PNG_MAGIC) and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if len(head) < 12:
        return None
    if int.from_bytes(head[0:4], "little") == 12:  # BITMAPCOREHEADER: 16-bit sizes
        width, height = int.from_bytes(head[4:6], "little"), int.from_bytes(head[6:8], "little")
    else:
        width = abs(int.from_bytes(head[4:8], "little", signed=True))
        height = abs(int.from_bytes(head[8:12], "little", signed=True))
    # An icon's DIB height covers the colour image and the AND mask stacked.
    return max(width, 1), max(height // 2, 1)


# --------------------------------------------------------------------------- pixels


def _prepare_pixels(image: Image.Image) -> tuple[Image.Image, OutputFormat]:
    """Pick the output format and convert to a mode that format stores faithfully."""
    mode = image.mode
    transparent = "transparency" in image.info
    if mode in ("RGBA", "LA", "1"):
        return image, "PNG"
    if mode == "P":
        return (image.convert("RGBA") if transparent else image), "PNG"
    if mode in ("RGBa", "PA"):
        return image.convert("RGBA"), "PNG"
    if mode == "La":
        return image.convert("LA"), "PNG"
    if mode in ("L", "RGB"):
        return (image.convert("RGBA"), "PNG") if transparent else (image, "JPEG")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _wide_to_gray(image), "JPEG"
    try:
        # CMYK, YCbCr, RGBX, ... Pillow's CMYK path already undoes Adobe's inverted CMYK.
        return image.convert("RGB"), "JPEG"
    except ValueError:
        raise ImageRejected(
            RejectCode.UNSUPPORTED_FORMAT,
            "This image uses a colour mode that is not supported.",
            mode=mode,
        ) from None


def _wide_to_gray(image: Image.Image) -> Image.Image:
    """16/32-bit and float greyscale to 8-bit without clipping everything to white."""
    if image.mode.startswith("I;16"):
        return image.point(lambda v: v * (1 / 256)).convert("L")
    low, high = image.getextrema()
    low, high = float(low), float(high)  # type: ignore[arg-type]
    if image.mode == "F" and low >= 0.0 and high <= 1.0:
        scale, offset = 255.0, 0.0  # float images conventionally hold 0..1
    elif low >= 0 and high <= 255:
        scale, offset = 1.0, 0.0
    else:
        scale = 255.0 / (high - low) if high > low else 0.0
        offset = -low * scale
    return image.point(lambda v: v * scale + offset).convert("L")


def _encode(image: Image.Image, fmt: OutputFormat, quality: int = _JPEG_QUALITY) -> bytes:
    # Encoders copy some metadata from `info` (JPEG comments, PNG ICC/transparency), so empty it.
    # This is what strips metadata when the decoded image is encoded without an intermediate copy.
    # Transparency was already folded into an alpha channel by _prepare_pixels.
    image.info = {}
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, "JPEG", quality=quality, optimize=False, progressive=False)
    else:
        # optimize=False: the extra zlib passes cost far more time than they save bytes.
        image.save(buffer, "PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _clean(data: bytes, fmt: OutputFormat, size: tuple[int, int], source: str) -> CleanImage:
    mime_type, extension = _MIME[fmt]
    return CleanImage(
        data=data,
        mime_type=mime_type,
        extension=extension,
        width=size[0],
        height=size[1],
        source_format=source,
        sha256=hashlib.sha256(data).hexdigest(),
    )


# --------------------------------------------------------------------------- resizing


def resize_to_fit(
    img: CleanImage, *, max_side: int | None, max_pixels: int | None, max_bytes: int | None
) -> CleanImage:
    """Scale ``img`` down (never up) until it meets a model's limits; keep PNG/JPEG as it is.

    Returns ``img`` itself when it already fits. Raises ``ImageRejected(too_large)`` only when no
    size down to 1x1 meets ``max_bytes``.
    """
    for name, value in (
        ("max_side", max_side),
        ("max_pixels", max_pixels),
        ("max_bytes", max_bytes),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be positive or None")
    target = _target_size((img.width, img.height), max_side, max_pixels)
    fits_bytes = max_bytes is None or len(img.data) <= max_bytes
    if target == (img.width, img.height) and fits_bytes:
        return img
    fmt: OutputFormat = "PNG" if img.mime_type == "image/png" else "JPEG"
    source = _decode_own(img, target)
    if max_bytes is None:
        resized = _resample(source, target)
        data = _encode(resized, fmt)
    else:
        resized, data = _shrink_to_bytes(source, fmt, max_bytes, start=target)
    return _clean(data, fmt, resized.size, img.source_format)


def _target_size(
    size: tuple[int, int], max_side: int | None, max_pixels: int | None
) -> tuple[int, int]:
    width, height = size
    scale = 1.0
    if max_side is not None:
        scale = min(scale, max_side / max(width, height))
    if max_pixels is not None:
        scale = min(scale, math.sqrt(max_pixels / (width * height)))
    if scale >= 1.0:
        return size
    new_w, new_h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    # Floating point can land one pixel over; trim the longer side until the limits hold.
    while (max_pixels is not None and new_w * new_h > max_pixels and max(new_w, new_h) > 1) or (
        max_side is not None and max(new_w, new_h) > max_side
    ):
        if new_w >= new_h:
            new_w -= 1
        else:
            new_h -= 1
    return new_w, new_h


def _decode_own(img: CleanImage, target: tuple[int, int]) -> Image.Image:
    """Decode bytes we produced ourselves; still through the PNG/JPEG decoders only."""
    fmt = "PNG" if img.mime_type == "image/png" else "JPEG"
    decoded: Image.Image = _open(img.data, formats=(fmt,))
    if fmt == "JPEG" and target != decoded.size:
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that is still >= target.
        decoded.draft(decoded.mode, target)
    decoded.load()  # no copy: the buffer is in memory, and a copy would double peak memory
    if decoded.mode in ("P", "1"):
        # Palette and bilevel images only resample with NEAREST; convert for a clean downscale.
        decoded = decoded.convert("RGB" if decoded.mode == "P" else "L")
    return decoded


def _resample(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    if image.size == target:
        return image
    return image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _shrink_to_bytes(
    image: Image.Image,
    fmt: OutputFormat,
    max_bytes: int,
    *,
    start: tuple[int, int] | None = None,
) -> tuple[Image.Image, bytes]:
    """Lower JPEG quality a little, then scale down until the encoding fits ``max_bytes``."""
    if image.mode in ("P", "1"):
        image = image.convert("RGB" if image.mode == "P" else "L")
    size = start or image.size
    current = _resample(image, size)
    qualities = (_JPEG_QUALITY, *_JPEG_FALLBACK_QUALITIES) if fmt == "JPEG" else (_JPEG_QUALITY,)
    for quality in qualities:
        data = _encode(current, fmt, quality)
        if len(data) <= max_bytes:
            return current, data
    for _ in range(_MAX_SHRINK_ROUNDS):
        if size == (1, 1):
            break
        # Encoded size grows roughly with area; aim a little under to converge in few rounds.
        ratio = math.sqrt(max_bytes / len(data)) * 0.9
        size = (max(1, math.floor(size[0] * ratio)), max(1, math.floor(size[1] * ratio)))
        current = _resample(image, size)
        data = _encode(current, fmt, quality)
        if len(data) <= max_bytes:
            return current, data
    raise ImageRejected(
        RejectCode.TOO_LARGE,
        f"This image cannot be reduced to fit the {_format_bytes(max_bytes)} limit.",
        limit=max_bytes,
    )


# --------------------------------------------------------------------------- names


def generated_name(clean: CleanImage) -> str:
    """A fresh storage path like ``ab/cd/<uuid4hex>.png``; nothing in it comes from the user."""
    if clean.extension not in ("png", "jpg"):
        raise ValueError("unexpected extension on CleanImage")
    token = uuid.uuid4().hex
    return f"{token[:2]}/{token[2:4]}/{token}.{clean.extension}"


_DISPLAY_MAX: Final = 120
_DISPLAY_FALLBACK: Final = "image"
# Controls (incl. NUL), format characters (bidi overrides/isolates, zero-width space, BOM, Unicode
# tag characters used to smuggle hidden text), surrogates and line/paragraph separators.
_DROPPED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# Joiners are format characters too, but Persian, Indic scripts and emoji sequences need them.
_KEPT_FORMAT_CHARS: Final = frozenset({"\u200c", "\u200d"})


def display_name(user_filename: str) -> str:
    """Text to *show* for an uploaded file's name. Never use it to build a path."""
    text = unicodedata.normalize("NFC", user_filename)
    text = "".join(ch for ch in text if _displayable(ch))
    text = re.split(r"[\\/]", text)[-1]  # basename for POSIX and Windows separators alike
    text = " ".join(text.split()).strip(" .")
    if not text:
        return _DISPLAY_FALLBACK
    if len(text) > _DISPLAY_MAX:
        text = _shorten(text)
    return text


def _displayable(ch: str) -> bool:
    return ch in _KEPT_FORMAT_CHARS or unicodedata.category(ch) not in _DROPPED_CATEGORIES


def _shorten(text: str) -> str:
    """Cut to _DISPLAY_MAX characters, keeping a short extension visible: 'long na….png'."""
    stem, dot, extension = text.rpartition(".")
    if dot and stem and 0 < len(extension) <= 10:
        keep = _DISPLAY_MAX - len(extension) - 2  # room for the ellipsis and the dot
        return _trim_end(stem[:keep]) + "\u2026." + extension
    return _trim_end(text[: _DISPLAY_MAX - 1]) + "\u2026"


def _trim_end(text: str) -> str:
    # A cut can leave a dangling joiner or trailing space that glues onto the ellipsis.
    return text.rstrip(" \u200c\u200d")


# --------------------------------------------------------------------------- signed URLs

_SIGNATURE_CONTEXT: Final = b"chat-image-url:v1"
_IMAGE_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_EXP_RE: Final = re.compile(r"[0-9]{1,12}")
_SIG_RE: Final = re.compile(r"[A-Za-z0-9_-]{43}")  # unpadded base64url of 32 bytes
_MIN_SECRET_BYTES: Final = 16


def sign_image_url(
    base_url: str, image_id: str, *, secret: bytes, ttl_seconds: int, now: float | None = None
) -> str:
    """``{base}/i/{image_id}?exp=<unix seconds>&sig=<base64url HMAC-SHA256>``.

    The signature covers this image id and expiry only, so it cannot be moved to another image
    or extended. ``image_id`` must be a plain token (letters, digits, ``_ . -``; no slashes).
    """
    if not _IMAGE_ID_RE.fullmatch(image_id) or ".." in image_id:
        raise ValueError("image_id must be 1-128 characters of [A-Za-z0-9_.-] without '..'")
    _check_secret(secret)
    if ttl_seconds < 1:
        raise ValueError("ttl_seconds must be positive")
    issued = time.time() if now is None else now
    exp = str(math.ceil(issued) + ttl_seconds)
    sig = _signature(image_id, exp, secret)
    return f"{base_url.rstrip('/')}/i/{image_id}?exp={exp}&sig={sig}"


def verify_image_signature(
    image_id: str, exp: str, sig: str, *, secret: bytes, now: float | None = None
) -> bool:
    """True only for an untampered, unexpired signature for this image. Never raises."""
    try:
        if not (isinstance(image_id, str) and isinstance(exp, str) and isinstance(sig, str)):
            return False
        if not (_IMAGE_ID_RE.fullmatch(image_id) and _EXP_RE.fullmatch(exp)):
            return False
        if not _SIG_RE.fullmatch(sig):
            return False
        if not isinstance(secret, bytes) or len(secret) < _MIN_SECRET_BYTES:
            return False
        expected = _signature(image_id, exp, secret)
        # Compare before looking at the clock so timing says nothing about the signature.
        valid = hmac.compare_digest(expected.encode("ascii"), sig.encode("ascii"))
        current = time.time() if now is None else now
        return valid and current < int(exp)
    except Exception:
        return False


def _signature(image_id: str, exp: str, secret: bytes) -> str:
    # Length-free framing is safe: image_id and exp both exclude the newline separator.
    message = b"\n".join((_SIGNATURE_CONTEXT, image_id.encode("ascii"), exp.encode("ascii")))
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes) or len(secret) < _MIN_SECRET_BYTES:
        raise ValueError(f"secret must be at least {_MIN_SECRET_BYTES} bytes")


# --------------------------------------------------------------------------- messages


def _too_large(size: int, limit: int, *, exact: bool) -> ImageRejected:
    size_text, limit_text = _format_bytes(size), _format_bytes(limit)
    if exact and size_text != limit_text:
        message = f"This file is {size_text}; the limit is {limit_text}."
    else:
        message = f"This file is larger than the {limit_text} limit."
    return ImageRejected(RejectCode.TOO_LARGE, message, size=size if exact else None, limit=limit)


def _too_many_pixels(size: tuple[int, int] | None, limits: ImageLimits) -> ImageRejected:
    limit_text = _format_pixels(limits.max_pixels)
    if size is None:
        # Pillow's own bomb guard fired before we could read the header ourselves.
        message = f"This image has too many pixels; the limit is {limit_text}."
        return ImageRejected(RejectCode.TOO_MANY_PIXELS, message, max_pixels=limits.max_pixels)
    width, height = size
    message = (
        f"This image is {width} x {height} pixels ({_format_pixels(width * height)}); "
        f"the limit is {limit_text}."
    )
    return ImageRejected(
        RejectCode.TOO_MANY_PIXELS,
        message,
        width=width,
        height=height,
        max_pixels=limits.max_pixels,
    )


def _unidentified(raw: bytes) -> ImageRejected:
    if raw.startswith(_ALLOWED_MAGIC) or (raw.startswith(b"RIFF") and raw[8:12] == b"WEBP"):
        return _corrupt()
    return ImageRejected(
        RejectCode.UNSUPPORTED_FORMAT,
        "This file is not a supported image. Please upload a JPEG, PNG, WebP, GIF, BMP, TIFF, "
        "ICO or JPEG 2000 image.",
    )


def _corrupt() -> ImageRejected:
    return ImageRejected(
        RejectCode.CORRUPT, "This image could not be read; it may be damaged or incomplete."
    )


def _format_bytes(size: int) -> str:
    if size >= _MB:
        return f"{_trim_number(size / _MB)} MB"
    if size >= _KB:
        return f"{_trim_number(size / _KB)} KB"
    return f"{size} byte{'s' if size != 1 else ''}"


def _format_pixels(count: int) -> str:
    if count >= 1_000_000:
        return f"{_trim_number(count / 1_000_000)} megapixels"
    return f"{count:,} pixels"


def _trim_number(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")
