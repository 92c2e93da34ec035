"""What an image costs to decode, judged from its own headers before any pixel is decoded, and the
whole check of an uploaded image.

Two things make an image expensive: its pixel count (a PNG of a few hundred bytes may claim
60000x60000) and, for a progressive JPEG, its scans. A decoder passes over the image once per scan,
so a 1 MB file that repeats one 12-byte scan 80,000 times takes minutes to decode however few its
pixels. The cost bound is therefore on both: pixels at most `max_pixels`, and pixels x scans at
most `max_pixels x scan_allowance` (a 16 MP photo may have 16 scans, libjpeg's progressive mode
writes 10; a smaller one proportionally more), with at most MAX_JPEG_SCANS in any case. The scans
are counted by walking the JPEG's markers (a regular expression skips each scan's data), which
costs microseconds per marker and stops at the first one over the limits.

The API runs `check_image` in a limited child (service/probe.py); the worker and the live path use
`check_cost` before they decode.
"""

import io
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
SCAN_ALLOWANCE = 16  # pixel-scans per pixel allowed: a full-size image may have this many scans
MAX_JPEG_SCANS = 256
MAX_JPEG_SEGMENTS = 4 * MAX_JPEG_SCANS + 256  # tables before every scan, and the file's own
EXIF_ORIENTATION = 0x0112
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (DHT, JPG, DAC are not)
STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM carry no length
SCAN_END = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")  # the first marker after a scan's data


class ImageRefused(Exception):
    """The image is refused; `code` says why (image_too_large, invalid_image)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class JpegHeader:
    width: int
    height: int
    scans: int


@dataclass(frozen=True)
class ImageFacts:
    format: str
    width: int  # as displayed (EXIF orientation applied)
    height: int
    bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def jpeg_header(data: bytes, max_scans: int = MAX_JPEG_SCANS) -> JpegHeader | None:
    """The frame size and scan count of a JPEG, counting scans only up to `max_scans + 1`; None
    when the markers cannot be walked (a corrupt file: the decoder will say so)."""
    width = height = scans = segments = 0
    pos = 2
    while pos + 4 <= len(data) and scans <= max_scans and segments <= MAX_JPEG_SEGMENTS:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte
            pos += 1
            continue
        if marker == 0xD9:
            break
        if marker in STANDALONE:
            pos += 2
            continue
        segments += 1
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in SOF_MARKERS and end >= pos + 9:
            height, width = int.from_bytes(data[pos + 5 : pos + 7]), int.from_bytes(data[pos + 7 : pos + 9])
        if marker == 0xDA:
            scans += 1
            found = SCAN_END.search(data, end)
            end = found.start() if found else len(data)
        pos = end
    if segments > MAX_JPEG_SEGMENTS:
        return JpegHeader(width, height, max(scans, max_scans + 1))
    return JpegHeader(width, height, scans)


def check_jpeg(
    header: JpegHeader, max_pixels: int, scan_allowance: int = SCAN_ALLOWANCE, name: str = "the image"
) -> None:
    """ImageRefused (image_too_large) when the JPEG's pixels, or its pixels x scans, are over the bound."""
    pixels = header.width * header.height
    if pixels > max_pixels:
        message = f"{name} is {header.width}x{header.height}; at most {max_pixels} pixels are accepted"
        raise ImageRefused("image_too_large", message)
    budget = max_pixels * scan_allowance
    if header.scans > MAX_JPEG_SCANS or pixels * header.scans > budget:
        shown = f"over {MAX_JPEG_SCANS}" if header.scans > MAX_JPEG_SCANS else str(header.scans)
        most = min(MAX_JPEG_SCANS, budget // max(pixels, 1))
        message = (
            f"{name} is a progressive JPEG of {shown} scans; at {header.width}x{header.height} at most "
            f"{most} are accepted (each scan is a pass of the decoder)"
        )
        raise ImageRefused("image_too_large", message)


def check_cost(data: bytes, kind: str, max_pixels: int, name: str = "the image") -> None:
    """check_jpeg for a JPEG whose markers can be walked (a decoder judges the others); other
    formats' pixel counts are read from their headers by Pillow (check_image)."""
    header = jpeg_header(data) if kind == "jpeg" else None
    if header is not None:
        check_jpeg(header, max_pixels, name=name)


def check_image(path: Path, kind: str, max_pixels: int, name: str = "source") -> ImageFacts:
    """The size as displayed (EXIF orientation applied); ImageRefused when too costly, truncated or
    not `kind`. The cost is judged from the headers; only then are the pixels decoded, to find a
    truncated or corrupt file here rather than in the worker."""
    data = path.read_bytes()
    check_cost(data, kind, max_pixels, name=name)
    try:
        with Image.open(io.BytesIO(data), formats=[IMAGE_FORMATS[kind]]) as img:
            width, height = img.size
            if width * height > max_pixels:
                message = f"{name} is {width}x{height}; at most {max_pixels} pixels are accepted"
                raise ImageRefused("image_too_large", message)
            if img.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8):
                width, height = height, width  # shown turned a quarter, as the worker will use it
            img.load()
    except Image.DecompressionBombError:
        raise ImageRefused("image_too_large", f"{name} is over {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        message = f"{name} is not a readable {kind.upper()} image ({exc})"
        raise ImageRefused("invalid_image", message) from None
    return ImageFacts(kind, width, height, len(data))
