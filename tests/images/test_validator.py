"""Behaviour of the image validator, resizer, names and signed URLs (threats T03, T11, T12, T24)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, features

from conversations.images.validator import (
    CleanImage,
    ImageLimits,
    ImageRejected,
    display_name,
    generated_name,
    resize_to_fit,
    sign_image_url,
    validate_image,
    verify_image_signature,
)
from tests.images import image_corpus as corpus

MB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- outcome table


@dataclass(frozen=True)
class Accepted:
    mime: str
    size: tuple[int, int]
    check: Callable[[Image.Image], None] | None = None


@dataclass(frozen=True)
class Rejected:
    code: str


@dataclass(frozen=True)
class Case:
    build: Callable[[], bytes]
    expect: Accepted | Rejected
    limits: ImageLimits = field(default_factory=ImageLimits)


def _near(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 24) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=False))


def _upright_red_over_blue(image: Image.Image) -> None:
    rgb = image.convert("RGB")
    assert _near(rgb.getpixel((10, 5)), corpus.RED)  # type: ignore[arg-type]
    assert _near(rgb.getpixel((10, 34)), corpus.BLUE)  # type: ignore[arg-type]


def _first_frame_red(image: Image.Image) -> None:
    assert _near(image.convert("RGB").getpixel((0, 0)), corpus.RED)  # type: ignore[arg-type]


def _cmyk_became_red(image: Image.Image) -> None:
    assert image.mode == "RGB"
    assert _near(image.getpixel((8, 8)), corpus.RED, 40)  # type: ignore[arg-type]


def _sixteen_bit_kept_mid_grey(image: Image.Image) -> None:
    assert image.mode == "L"
    assert 120 <= image.getpixel((4, 4)) <= 136  # type: ignore[operator]  # not clipped to 255


def _float_kept_mid_grey(image: Image.Image) -> None:
    assert 120 <= image.getpixel((2, 2)) <= 136  # type: ignore[operator]


def _alpha_kept(image: Image.Image) -> None:
    assert image.mode == "RGBA"
    assert image.getpixel((0, 0))[3] < 255  # type: ignore[index]


def _palette_transparency_became_alpha(image: Image.Image) -> None:
    assert image.mode == "RGBA"
    assert image.getpixel((0, 0)) == (*corpus.RED, 255)
    assert "transparency" not in image.info


PNG, JPEG = "image/png", "image/jpeg"
LOW_PIXELS = ImageLimits(max_pixels=5_000_000)
ABOVE_PILLOW_GUARD = ImageLimits(max_pixels=200_000_000, max_side=20_000)

CASES: dict[str, Case] = {
    # T12 (a)(b): decompression bombs, header-only and genuine, refused before load()
    "bomb_png_header_30000x30000": Case(corpus.bomb_png_30000, Rejected("too_many_pixels")),
    "bomb_png_real_between_1x_and_2x_lowered_limit": Case(
        corpus.bomb_png_real, Rejected("too_many_pixels"), LOW_PIXELS
    ),
    "bomb_png_real_tiny_between_1x_and_2x_limit": Case(
        lambda: corpus.bomb_png_real(120),
        Rejected("too_many_pixels"),
        ImageLimits(max_pixels=10_000),
    ),
    "bomb_png_in_pillow_warning_zone": Case(
        lambda: corpus.png_header_claiming(10_000, 10_000),
        Rejected("too_many_pixels"),
        ABOVE_PILLOW_GUARD,
    ),
    "bomb_webp_real_between_1x_and_2x_lowered_limit": Case(
        corpus.bomb_webp_real, Rejected("too_many_pixels"), LOW_PIXELS
    ),
    "bomb_webp_header_64mp": Case(
        lambda: corpus.webp_header_claiming(8000, 8000), Rejected("too_many_pixels")
    ),
    "bomb_ico_with_7000x7000_embedded_png": Case(
        corpus.bomb_ico_embedded_png, Rejected("too_many_pixels")
    ),
    "genuine_9mp_png_within_default_limits": Case(
        corpus.bomb_png_real, Accepted(JPEG, (3000, 3000))
    ),
    "huge_width_100000x1": Case(
        lambda: corpus.png_header_claiming(100_000, 1), Rejected("dimensions_too_large")
    ),
    "huge_height_1x9000": Case(
        lambda: corpus.png_header_claiming(1, 9000), Rejected("dimensions_too_large")
    ),
    # T12 (d): tiny and thin images must neither crash nor be refused
    "png_1x1": Case(corpus.png_1x1, Accepted(JPEG, (1, 1))),
    "jpeg_1x1": Case(corpus.jpeg_1x1, Accepted(JPEG, (1, 1))),
    "png_1xN": Case(corpus.png_1xn, Accepted(JPEG, (1, 500))),
    "png_Nx1": Case(corpus.png_nx1, Accepted(JPEG, (500, 1))),
    "png_1x1_below_raised_min_side": Case(
        corpus.png_1x1, Rejected("too_small"), ImageLimits(min_side=2)
    ),
    "png_zero_width_header": Case(corpus.png_zero_width, Rejected("corrupt")),
    "gif_zero_size_header": Case(corpus.gif_zero_size, Rejected("corrupt")),
    # T12 (e): truncated or damaged files
    "truncated_jpeg": Case(corpus.truncated_jpeg, Rejected("corrupt")),
    "truncated_png": Case(corpus.truncated_png, Rejected("corrupt")),
    "png_with_bad_crc": Case(corpus.png_bad_crc, Rejected("corrupt")),
    # T03 / T12 (c): content decides, never the name
    "html_named_png": Case(corpus.html_named_png, Rejected("unsupported_format")),
    "svg_with_script": Case(corpus.svg_with_script, Rejected("unsupported_format")),
    "pdf": Case(corpus.pdf_bytes, Rejected("unsupported_format")),
    "psd_header": Case(corpus.psd_header, Rejected("unsupported_format")),
    "fits_header": Case(corpus.fits_header, Rejected("unsupported_format")),
    "png_html_polyglot": Case(corpus.png_html_polyglot, Accepted(JPEG, (8, 8))),
    "gif_js_polyglot_script_after_trailer": Case(corpus.gif_js_polyglot, Accepted(PNG, (4, 4))),
    "gif_js_polyglot_classic_gif89a_comment": Case(
        corpus.gif_js_polyglot_classic, Rejected("dimensions_too_large")
    ),
    # every allowed format, re-encoded to PNG or JPEG
    "tiff_rgb": Case(corpus.tiff_rgb, Accepted(JPEG, (20, 10))),
    "tiff_float": Case(corpus.tiff_float, Accepted(JPEG, (5, 5), _float_kept_mid_grey)),
    "bmp_rgb": Case(corpus.bmp_rgb, Accepted(JPEG, (9, 5))),
    "ico_largest_icon": Case(corpus.ico_rgba, Accepted(PNG, (32, 32))),
    "webp_rgb": Case(corpus.webp_rgb, Accepted(JPEG, (24, 16))),
    "webp_rgba": Case(corpus.webp_rgba, Accepted(PNG, (24, 16), _alpha_kept)),
    "webp_animated_first_frame": Case(
        corpus.webp_animated, Accepted(JPEG, (16, 16), _first_frame_red)
    ),
    "jpeg2000": Case(corpus.jpeg2000, Accepted(JPEG, (16, 12))),
    "gif_animated_first_frame": Case(
        corpus.gif_animated, Accepted(PNG, (12, 12), _first_frame_red)
    ),
    "gif_10000_frames": Case(corpus.gif_many_frames, Accepted(PNG, (1, 1))),
    "apng_first_frame": Case(corpus.apng_animated, Accepted(PNG, (10, 10), _first_frame_red)),
    "jpeg_cmyk": Case(corpus.jpeg_cmyk, Accepted(JPEG, (16, 16), _cmyk_became_red)),
    "jpeg_gray": Case(corpus.jpeg_gray, Accepted(JPEG, (12, 7))),
    "png_16bit_gray": Case(
        corpus.png_16bit_gray, Accepted(JPEG, (8, 8), _sixteen_bit_kept_mid_grey)
    ),
    "png_16bit_rgba": Case(corpus.png_16bit_rgba, Accepted(PNG, (6, 4), _alpha_kept)),
    "png_rgba": Case(corpus.png_rgba, Accepted(PNG, (10, 6), _alpha_kept)),
    "png_palette_transparent": Case(
        corpus.png_palette_transparent, Accepted(PNG, (8, 8), _palette_transparency_became_alpha)
    ),
    "png_bilevel": Case(corpus.png_bilevel, Accepted(PNG, (16, 9))),
    # T24: metadata never survives, orientation does
    "jpeg_exif_gps_orientation_6": Case(
        corpus.jpeg_exif_gps_orientation6, Accepted(JPEG, (20, 40), _upright_red_over_blue)
    ),
    "jpeg_every_leak_upright": Case(corpus.jpeg_with_every_leak, Accepted(JPEG, (40, 20))),
    "jpeg_every_leak_bogus_orientation_9": Case(
        lambda: corpus.jpeg_with_every_leak(orientation=9), Accepted(JPEG, (40, 20))
    ),
    "png_text_exif_icc_chunks": Case(corpus.png_with_text_chunks, Accepted(PNG, (8, 8))),
    # sizes
    "empty_file": Case(lambda: b"", Rejected("empty")),
    "exactly_at_default_limit": Case(lambda: corpus.at_size(10 * MB), Accepted(JPEG, (1, 1))),
    "one_byte_over_default_limit": Case(lambda: corpus.at_size(10 * MB + 1), Rejected("too_large")),
    "exactly_at_lowered_limit": Case(
        lambda: corpus.at_size(2000), Accepted(JPEG, (1, 1)), ImageLimits(max_bytes=2000)
    ),
    "one_byte_over_lowered_limit": Case(
        lambda: corpus.at_size(2001), Rejected("too_large"), ImageLimits(max_bytes=2000)
    ),
}

ACCEPTED = [name for name, case in CASES.items() if isinstance(case.expect, Accepted)]
REJECTED = [name for name, case in CASES.items() if isinstance(case.expect, Rejected)]

ALLOWED_PNG_CHUNKS = {"IHDR", "PLTE", "IDAT", "IEND"}
ALLOWED_JPEG_MARKERS = {"APP0", "DQT", "SOF0", "DHT", "SOS"}
ALLOWED_JPEG_INFO = {"jfif", "jfif_version", "jfif_unit", "jfif_density"}
LEAK_MARKERS = (
    corpus.SECRET_TEXT.encode(),
    corpus.SECRET_TEXT[:15].encode(),
    b"LeakyCam",
    b"Model-X-SECRET",
    b"<script",
    b"alert(",
    b"http://ns.adobe.com",
    b"Photoshop 3.0",
    b"ICC_PROFILE",
    b"Exif\x00",
)


@pytest.mark.parametrize("name", REJECTED)
def test_it_refuses_hostile_or_broken_files_with_a_code_and_a_message(name: str) -> None:
    case = CASES[name]
    assert isinstance(case.expect, Rejected)
    with pytest.raises(ImageRejected) as caught:
        validate_image(case.build(), case.limits)
    assert caught.value.code == case.expect.code
    message = caught.value.message
    assert message
    assert message.endswith(".")
    assert str(caught.value) == message
    assert "<" not in message  # nothing from the file is echoed back


@pytest.mark.parametrize("name", ACCEPTED)
def test_it_accepts_real_images_as_clean_png_or_jpeg(name: str) -> None:
    case = CASES[name]
    assert isinstance(case.expect, Accepted)
    clean = validate_image(case.build(), case.limits)

    assert clean.mime_type == case.expect.mime
    assert (clean.width, clean.height) == case.expect.size
    assert clean.sha256 == hashlib.sha256(clean.data).hexdigest()
    assert len(clean.data) <= case.limits.max_bytes
    for marker in LEAK_MARKERS:
        assert marker not in clean.data

    reopened = Image.open(io.BytesIO(clean.data), formats=["PNG", "JPEG"])
    assert reopened.size == case.expect.size
    assert len(reopened.getexif()) == 0
    assert getattr(reopened, "n_frames", 1) == 1
    if clean.mime_type == PNG:
        assert (clean.extension, reopened.format) == ("png", "PNG")
        assert clean.data.startswith(corpus.PNG_MAGIC)
        assert set(corpus.png_chunk_types(clean.data)) <= ALLOWED_PNG_CHUNKS
        assert reopened.info == {}
    else:
        assert (clean.extension, reopened.format) == ("jpg", "JPEG")
        assert clean.data.startswith(corpus.JPEG_MAGIC)
        assert set(corpus.jpeg_marker_names(clean.data)) <= ALLOWED_JPEG_MARKERS
        assert set(reopened.info) <= ALLOWED_JPEG_INFO
        assert reopened.mode in ("RGB", "L")
    if case.expect.check is not None:
        reopened.load()
        case.expect.check(reopened)


def test_the_corpus_exercises_jpeg2000_because_pillow_has_the_codec() -> None:
    assert features.check("jpg_2000")
    assert validate_image(corpus.jpeg2000()).source_format == "JPEG2000"


def test_it_records_the_detected_source_format_not_the_claimed_one() -> None:
    assert validate_image(corpus.tiff_rgb()).source_format == "TIFF"
    assert validate_image(corpus.ico_rgba()).source_format == "ICO"
    assert validate_image(corpus.gif_js_polyglot()).source_format == "GIF"


# --------------------------------------------------------------------------- limits and messages


def test_it_states_size_and_limit_in_megabytes() -> None:
    with pytest.raises(ImageRejected) as caught:
        validate_image(b"\x00" * int(12.3 * MB))
    assert caught.value.code == "too_large"
    assert caught.value.message == "This file is 12.3 MB; the limit is 10 MB."


def test_it_does_not_claim_a_file_one_byte_over_is_the_same_size_as_the_limit() -> None:
    with pytest.raises(ImageRejected) as caught:
        validate_image(corpus.at_size(10 * MB + 1))
    assert caught.value.message == "This file is larger than the 10 MB limit."


def test_it_names_dimensions_in_pixel_messages() -> None:
    with pytest.raises(ImageRejected) as caught:
        validate_image(corpus.bomb_png_real(), LOW_PIXELS)
    assert caught.value.message == (
        "This image is 3000 x 3000 pixels (9 megapixels); the limit is 5 megapixels."
    )
    assert caught.value.params["width"] == 3000


class CountingReader(io.RawIOBase):
    """A binary stream that remembers how many bytes were pulled from it."""

    def __init__(self, payload: bytes) -> None:
        self._inner = io.BytesIO(payload)
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        chunk = self._inner.read(min(len(buffer), 64 * 1024))  # short reads, like a socket
        buffer[: len(chunk)] = chunk
        self.bytes_read += len(chunk)
        return len(chunk)


def test_it_reads_at_most_one_byte_past_the_limit_from_a_file_object() -> None:
    limits = ImageLimits(max_bytes=1000)
    stream = CountingReader(corpus.at_size(50_000))
    with pytest.raises(ImageRejected) as caught:
        validate_image(cast(BinaryIO, stream), limits)
    assert caught.value.code == "too_large"
    assert stream.bytes_read == limits.max_bytes + 1
    assert caught.value.message == "This file is larger than the 1000 bytes limit."


def test_it_accepts_a_file_object_exactly_at_the_limit_despite_short_reads() -> None:
    payload = corpus.at_size(200_000)
    clean = validate_image(cast(BinaryIO, CountingReader(payload)), ImageLimits(max_bytes=200_000))
    assert (clean.width, clean.height) == (1, 1)


def test_it_reports_an_empty_stream_as_empty() -> None:
    with pytest.raises(ImageRejected) as caught:
        validate_image(io.BytesIO(b""))
    assert caught.value.code == "empty"


def test_it_leaves_pillow_globals_and_warning_filters_as_it_found_them() -> None:
    pixels_before = Image.MAX_IMAGE_PIXELS
    filters_before = list(warnings.filters)
    for name in ("bomb_png_header_30000x30000", "bomb_png_in_pillow_warning_zone", "png_1x1"):
        case = CASES[name]
        with contextlib.suppress(ImageRejected):
            validate_image(case.build(), case.limits)
    assert pixels_before == Image.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert list(warnings.filters) == filters_before


def test_pillows_bomb_warning_is_raised_as_an_error_not_emitted() -> None:
    with warnings.catch_warnings(record=True) as emitted:
        warnings.simplefilter("always")
        with pytest.raises(ImageRejected) as caught:
            validate_image(corpus.png_header_claiming(10_000, 10_000), ABOVE_PILLOW_GUARD)
    assert caught.value.code == "too_many_pixels"
    assert not [w for w in emitted if issubclass(w.category, Image.DecompressionBombWarning)]


def test_limits_above_pillows_guard_are_reported_as_pillows_figure() -> None:
    with pytest.raises(ImageRejected) as caught:
        validate_image(corpus.webp_header_claiming(16_383, 10_000), ABOVE_PILLOW_GUARD)
    assert caught.value.code == "too_many_pixels"
    assert "89.5 megapixels" in caught.value.message


def test_it_shrinks_a_reencoding_that_would_outgrow_the_byte_limit() -> None:
    # Lossy WebP noise with alpha is small; the same pixels as PNG are many times larger.
    webp = corpus.encode(corpus.noise((200, 200), "RGBA"), "WEBP", quality=1)
    limits = ImageLimits(max_bytes=len(webp))
    clean = validate_image(webp, limits)
    assert clean.mime_type == PNG
    assert len(clean.data) <= limits.max_bytes
    assert clean.width < 200
    assert clean.width == clean.height


def test_image_limits_refuse_nonsense_values() -> None:
    with pytest.raises(ValueError):
        ImageLimits(max_bytes=0)
    with pytest.raises(ValueError):
        ImageLimits(min_side=10, max_side=5)


def test_clean_image_repr_never_dumps_the_bytes() -> None:
    clean = validate_image(corpus.png_html_polyglot())
    assert "data=" not in repr(clean)
    assert len(repr(clean)) < 400


# --------------------------------------------------------------------------- robustness


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    mutated = bytearray(data)
    for position, value in edits:
        mutated[position % len(mutated)] = value
    return bytes(mutated[:cut] if cut else mutated)


SEEDS = [
    corpus.png_1x1(),
    corpus.jpeg_exif_gps_orientation6(),
    corpus.jpeg_with_every_leak(),
    corpus.gif_animated(),
    corpus.tiff_rgb(),
    corpus.bmp_rgb(),
    corpus.ico_rgba(),
    corpus.webp_animated(),
    corpus.jpeg2000(),
    corpus.png_16bit_rgba(),
]


@settings(
    max_examples=250, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=6),
    cut=st.none() | st.integers(1, 4096),
)
def test_mutated_files_are_either_clean_images_or_image_rejected(
    seed: bytes, edits: list[tuple[int, int]], cut: int | None
) -> None:
    limits = ImageLimits(max_pixels=1_000_000, max_side=2048)
    unexpected = _RecordingHandler()
    logging.getLogger("conversations.images.validator").addHandler(unexpected)
    try:
        clean = validate_image(_mutate(seed, edits, cut), limits)
    except ImageRejected as rejected:
        # Every failure must be one we anticipated, not the catch-all for decoder surprises.
        assert not unexpected.records, unexpected.records[0].getMessage()
        assert rejected.code in {
            "too_many_pixels",
            "dimensions_too_large",
            "too_small",
            "unsupported_format",
            "corrupt",
        }
        return
    finally:
        logging.getLogger("conversations.images.validator").removeHandler(unexpected)
    assert clean.mime_type in (PNG, JPEG)
    assert clean.width * clean.height <= limits.max_pixels


class _RecordingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_unexpected_failures_are_logged_without_file_content(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("DEBUG", logger="conversations.images.validator"):
        for name in REJECTED:
            case = CASES[name]
            with pytest.raises(ImageRejected):
                validate_image(case.build(), case.limits)
    assert "alert(" not in caplog.text
    assert "<html" not in caplog.text


_MEMORY_PROBE = """
import json, resource, sys
from conversations.images.validator import ImageLimits, ImageRejected, validate_image
from tests.images import image_corpus as corpus
files = [
    (corpus.bomb_png_30000(), ImageLimits()),
    (corpus.png_header_claiming(10_000, 10_000), ImageLimits(max_pixels=10**9, max_side=20_000)),
    (corpus.bomb_png_real(), ImageLimits(max_pixels=5_000_000)),
    (corpus.bomb_webp_real(), ImageLimits(max_pixels=5_000_000)),
    (corpus.webp_header_claiming(8000, 8000), ImageLimits()),
    (corpus.bomb_ico_embedded_png(), ImageLimits()),
    (corpus.gif_many_frames(), ImageLimits()),
]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
codes = []
for data, limits in files:
    try:
        validate_image(data, limits)
        codes.append("accepted")
    except ImageRejected as rejected:
        codes.append(rejected.code)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
report = {"before_kib": before, "after_kib": after, "codes": codes}
report["django_imported"] = "django" in sys.modules
json.dump(report, sys.stdout)
"""


def test_bombs_are_refused_without_allocating_their_pixels() -> None:
    # Pillow's pixel buffers bypass tracemalloc, so measure the peak RSS of a fresh process.
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    report = json.loads(result.stdout)
    assert report["codes"] == ["too_many_pixels"] * 6 + ["accepted"]
    assert report["django_imported"] is False  # the validator runs without Django settings
    grown_kib = report["after_kib"] - report["before_kib"]
    # The smallest bomb here would need 49 MP (about 190 MiB as RGBA) if it were decoded.
    assert grown_kib < 32 * 1024


# --------------------------------------------------------------------------- resize_to_fit


def _jpeg_clean(size: tuple[int, int]) -> CleanImage:
    return validate_image(corpus.encode(corpus.noise(size), "JPEG", quality=95))


def test_resize_returns_the_same_image_when_it_already_fits() -> None:
    clean = validate_image(corpus.png_rgba())
    assert resize_to_fit(clean, max_side=100, max_pixels=10_000, max_bytes=10 * MB) is clean
    assert resize_to_fit(clean, max_side=None, max_pixels=None, max_bytes=None) is clean


def test_resize_never_scales_up() -> None:
    clean = validate_image(corpus.png_1xn())
    resized = resize_to_fit(clean, max_side=10_000, max_pixels=10**9, max_bytes=None)
    assert (resized.width, resized.height) == (1, 500)


def test_resize_meets_max_side_keeping_aspect_ratio() -> None:
    clean = _jpeg_clean((400, 100))
    resized = resize_to_fit(clean, max_side=200, max_pixels=None, max_bytes=None)
    assert (resized.width, resized.height) == (200, 50)
    assert resized.mime_type == JPEG
    with Image.open(io.BytesIO(resized.data)) as reopened:
        assert reopened.size == (200, 50)


def test_resize_meets_max_pixels() -> None:
    clean = _jpeg_clean((300, 200))
    resized = resize_to_fit(clean, max_side=None, max_pixels=6000, max_bytes=None)
    assert resized.width * resized.height <= 6000
    assert resized.width >= 90  # not shrunk more than needed (94 x 63 is the ideal)


def test_resize_meets_max_bytes_and_stays_png_with_alpha() -> None:
    clean = validate_image(corpus.encode(corpus.noise((160, 120), "RGBA"), "PNG"))
    resized = resize_to_fit(clean, max_side=None, max_pixels=None, max_bytes=20_000)
    assert len(resized.data) <= 20_000
    assert resized.mime_type == PNG
    assert resized.source_format == "PNG"
    assert resized.sha256 == hashlib.sha256(resized.data).hexdigest()
    with Image.open(io.BytesIO(resized.data)) as reopened:
        assert reopened.mode == "RGBA"
        assert reopened.size == (resized.width, resized.height)


def test_resize_meets_a_provider_byte_limit_for_a_large_jpeg() -> None:
    clean = _jpeg_clean((600, 400))
    resized = resize_to_fit(clean, max_side=None, max_pixels=None, max_bytes=len(clean.data) // 4)
    assert len(resized.data) <= len(clean.data) // 4
    assert resized.data.startswith(corpus.JPEG_MAGIC)
    assert resized.width <= 600


def test_resize_refuses_an_impossible_byte_limit() -> None:
    clean = _jpeg_clean((64, 64))
    with pytest.raises(ImageRejected) as caught:
        resize_to_fit(clean, max_side=None, max_pixels=None, max_bytes=40)
    assert caught.value.code == "too_large"


def test_resize_downscales_palette_pngs() -> None:
    clean = validate_image(corpus.gif_animated())
    resized = resize_to_fit(clean, max_side=6, max_pixels=None, max_bytes=None)
    assert (resized.width, resized.height) == (6, 6)
    assert resized.mime_type == PNG


# --------------------------------------------------------------------------- names (T11)

HOSTILE_NAMES = [
    "../../x.png",
    "..\\x.png",
    "..\\..\\windows\\system32\\x.png",
    "/etc/passwd",
    "evil.png\x00.html",
    "\u202egnp.exe",
    "photo\u2066\u2069\u200b\ufeff.jpg",
    "\u00e9" * 300 + ".png",
    "\U0001f600" * 300,
    "..",
    "",
    "\x00\x01\x1f",
    "line\nbreak\r\tname.png",
    "a\u2028b.png",
    "tag\U000e0041\U000e0042.png",
]


@pytest.mark.parametrize("raw", HOSTILE_NAMES)
def test_display_name_is_safe_text(raw: str) -> None:
    shown = display_name(raw)
    assert 0 < len(shown) <= 120
    assert "/" not in shown
    assert "\\" not in shown
    assert shown not in (".", "..")
    for ch in shown:
        assert ch.isprintable() or ch in "\u200c\u200d", repr(ch)
        assert ch not in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200b\ufeff"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("../../x.png", "x.png"),
        ("..\\x.png", "x.png"),
        ("/etc/passwd", "passwd"),
        ("C:\\Users\\me\\holiday.jpg", "holiday.jpg"),
        ("evil.png\x00.html", "evil.png.html"),
        ("\u202egnp.exe", "gnp.exe"),
        ("line\nbreak\r\tname.png", "linebreakname.png"),
        ("  spaced   out  .png", "spaced out .png"),
        ("..", "image"),
        ("", "image"),
        ("caf\u0065\u0301.png", "caf\u00e9.png"),  # NFC
        ("\u0628\u200c\u0647.png", "\u0628\u200c\u0647.png"),  # ZWNJ kept for Persian
    ],
)
def test_display_name_examples(raw: str, shown: str) -> None:
    assert display_name(raw) == shown


def test_display_name_keeps_the_extension_visible_when_shortened() -> None:
    shown = display_name("\u00e9" * 300 + ".png")
    assert len(shown) == 120
    assert shown.endswith("\u2026.png")


def test_generated_name_is_server_made_and_stays_under_the_storage_root() -> None:
    clean = validate_image(corpus.png_rgba())
    names = {generated_name(clean) for _ in range(50)}
    assert len(names) == 50
    for name in names:
        first, second, leaf = name.split("/")
        stem, extension = leaf.split(".")
        assert extension == "png"
        assert len(stem) == 32 and all(c in "0123456789abcdef" for c in stem)
        assert (first, second) == (stem[:2], stem[2:4])
        assert not PurePosixPath(name).is_absolute()
        assert ".." not in PurePosixPath(name).parts
        root = Path("/srv/media")
        assert (root / name).resolve().is_relative_to(root)


def test_generated_name_ignores_everything_the_user_supplied() -> None:
    clean = validate_image(corpus.jpeg_exif_gps_orientation6())
    name = generated_name(clean)
    assert name.endswith(".jpg")
    for fragment in ("..", "LeakyCam", "SECRET", "passwd", "exe", "html"):
        assert fragment not in name


# --------------------------------------------------------------------------- signed URLs (T03)

SECRET = b"s" * 32
OTHER_SECRET = b"t" * 32
NOW = 1_700_000_000.0


def _signed_parts(url: str) -> tuple[str, str, str]:
    path, _, query = url.partition("?")
    params = dict(pair.split("=", 1) for pair in query.split("&"))
    return path.rsplit("/", 1)[1], params["exp"], params["sig"]


def test_signed_url_has_the_documented_shape_and_verifies() -> None:
    url = sign_image_url("https://media.example/", "img_42", secret=SECRET, ttl_seconds=60, now=NOW)
    assert url.startswith("https://media.example/i/img_42?exp=1700000060&sig=")
    image_id, exp, sig = _signed_parts(url)
    assert verify_image_signature(image_id, exp, sig, secret=SECRET, now=NOW + 59)


def test_signature_expires() -> None:
    image_id, exp, sig = _signed_parts(
        sign_image_url("https://m", "img_42", secret=SECRET, ttl_seconds=60, now=NOW)
    )
    assert not verify_image_signature(image_id, exp, sig, secret=SECRET, now=NOW + 60)
    assert not verify_image_signature(image_id, exp, sig, secret=SECRET, now=NOW + 10_000)


def test_signature_is_bound_to_one_image_expiry_and_secret() -> None:
    image_id, exp, sig = _signed_parts(
        sign_image_url("https://m", "img_42", secret=SECRET, ttl_seconds=60, now=NOW)
    )
    tampered_sig = ("A" if sig[0] != "A" else "B") + sig[1:]
    assert not verify_image_signature(image_id, exp, tampered_sig, secret=SECRET, now=NOW)
    assert not verify_image_signature("img_43", exp, sig, secret=SECRET, now=NOW)
    assert not verify_image_signature(image_id, str(int(exp) + 3600), sig, secret=SECRET, now=NOW)
    assert not verify_image_signature(image_id, exp, sig, secret=OTHER_SECRET, now=NOW)


@pytest.mark.parametrize(
    ("image_id", "exp", "sig"),
    [
        ("img_42", "", "x" * 43),
        ("img_42", "-5", "x" * 43),
        ("img_42", "1e12", "x" * 43),
        ("img_42", "\u0661\u0662\u0663", "x" * 43),  # Arabic-Indic digits pass str.isdigit()
        ("img_42", "9" * 400, "x" * 43),
        ("img_42", "1700000060", ""),
        ("img_42", "1700000060", "\u00e9" * 43),  # non-ASCII would make compare_digest raise
        ("img_42", "1700000060", "x" * 44),
        ("img_42", "1700000060", "%2F" * 15),
        ("", "1700000060", "x" * 43),
        ("../img_42", "1700000060", "x" * 43),
        ("img/42", "1700000060", "x" * 43),
        (None, "1700000060", "x" * 43),
        ("img_42", None, "x" * 43),
        ("img_42", "1700000060", None),
        ("img_42", "1700000060", b"x" * 43),
    ],
)
def test_malformed_signatures_are_rejected_without_raising(
    image_id: object, exp: object, sig: object
) -> None:
    assert not verify_image_signature(image_id, exp, sig, secret=SECRET, now=NOW)  # type: ignore[arg-type]


def test_verify_rejects_rather_than_raises_on_a_bad_secret() -> None:
    assert not verify_image_signature("img_42", "1700000060", "x" * 43, secret=b"", now=NOW)
    assert not verify_image_signature("img_42", "1700000060", "x" * 43, secret="s", now=NOW)  # type: ignore[arg-type]


def test_signing_refuses_ids_that_could_escape_the_path_and_weak_secrets() -> None:
    for bad_id in ("", "../x", "a/b", "a..b", "a?b", "a b", "x" * 200):
        with pytest.raises(ValueError):
            sign_image_url("https://m", bad_id, secret=SECRET, ttl_seconds=60, now=NOW)
    with pytest.raises(ValueError) as caught:
        sign_image_url("https://m", "img", secret=b"short", ttl_seconds=60, now=NOW)
    assert "short" not in str(caught.value)
    with pytest.raises(ValueError):
        sign_image_url("https://m", "img", secret=SECRET, ttl_seconds=0, now=NOW)


def test_verify_uses_the_clock_when_no_time_is_given() -> None:
    url = sign_image_url("https://m", "img_42", secret=SECRET, ttl_seconds=300)
    assert verify_image_signature(*_signed_parts(url), secret=SECRET)
