"""The API's first look at uploaded media: the type by its magic bytes, then a cheap probe.

The file name and the declared Content-Type are the client's word and are ignored. Images are
opened with Pillow, which reads the header first: a size over MAX_PIXELS (a decompression bomb) is
refused before any pixel is decoded. Videos are described from their container's structured fields
and their packets, without decoding a frame (contract/container.py), in a child process with
memory, time and concurrency limits (service/probe.py): no tag in the file can pass for a length or
a size, and only local files are opened, with the demuxer of the sniffed container forced, so a
playlist or concat script cannot make FFmpeg open anything else. The worker checks again.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from contract.container import UnreadableVideo, read_container
from contract.redaction import without_paths
from contract.settings import Settings
from contract.storage import SOURCE
from service.errors import ApiError
from service.probe import ProbeFailed, Prober

IMAGE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
VIDEO_DEMUXERS = {"mp4": "mov", "mov": "mov", "webm": "matroska", "mkv": "matroska"}  # the allow-list
SNIFF_BYTES = 64
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageSummary:
    format: str
    width: int
    height: int
    bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VideoSummary:
    format: str
    width: int
    height: int
    fps: float
    duration: float
    frames: int  # estimated from the header: duration x fps
    audio: bool
    bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def sniff_image(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def sniff_video(head: bytes) -> str | None:
    if head[4:8] == b"ftyp":
        return "mov" if head[8:12] == b"qt  " else "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: Matroska or its WebM subset
        return "webm" if b"webm" in head[:SNIFF_BYTES] else "mkv"
    return None


def _bad_image(code: str, message: str) -> ApiError:
    return ApiError(400, code, message, field="source")


def probe_image(path: Path, kind: str, max_pixels: int) -> ImageSummary:
    """The size as displayed (EXIF orientation applied); 400 when too large, truncated or not `kind`.

    The pixel count is checked from the header; only then are the pixels decoded, to find a
    truncated or corrupt file here rather than in the worker.
    """
    try:
        with Image.open(path, formats=[IMAGE_FORMATS[kind]]) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise _bad_image(
                    "image_too_large", f"source is {width}x{height}; at most {max_pixels} pixels are accepted"
                )
            if img.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8):
                width, height = height, width  # shown turned a quarter, as the worker will use it
            img.load()
    except ApiError:
        raise
    except Image.DecompressionBombError:
        raise _bad_image("image_too_large", f"source is over {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = without_paths(str(exc), (SOURCE,))
        raise _bad_image(
            "invalid_image", f"source is not a readable {kind.upper()} image ({reason})"
        ) from None
    return ImageSummary(kind, width, height, path.stat().st_size)


def _bad_video(code: str, message: str) -> ApiError:
    return ApiError(400, code, message, field="driving")


def probe_video(path: Path, kind: str, settings: Settings, prober: Prober | None = None) -> VideoSummary:
    """The container's own fields and its packets (no frame is decoded), read by `prober` in a
    limited child process (in this process without one); 400 when it has no video stream or its
    length, frame count or frame size is over the limits."""
    demuxer, max_packets = VIDEO_DEMUXERS[kind], settings.max_driving_frames + 1
    try:
        if prober is None:
            facts = read_container(path, demuxer, max_packets)
        else:
            facts = prober.read(path, demuxer, max_packets)
    except UnreadableVideo:
        raise _bad_video("invalid_video", f"driving is not a readable {kind.upper()} video") from None
    except ProbeFailed as exc:
        raise _bad_video("invalid_video", f"driving could not be checked: {exc}") from None
    width, height, fps = facts.width, facts.height, facts.fps
    if fps <= 0 or width <= 0 or height <= 0 or facts.packets == 0:
        raise _bad_video("invalid_video", "driving has no decodable video stream")
    if width * height > settings.max_driving_pixels:
        raise _bad_video(
            "video_too_large",
            f"driving is {width}x{height}; at most {settings.max_driving_pixels} pixels a frame are accepted",
        )
    duration = facts.seconds
    if duration <= 0:
        raise _bad_video("invalid_video", "driving has no measurable length")
    if duration > settings.max_driving_seconds:
        raise _bad_video(
            "video_too_long",
            f"driving lasts {duration:.1f} s; at most {settings.max_driving_seconds:g} s are accepted",
        )
    frames = facts.frames
    if frames > settings.max_driving_frames:
        raise _bad_video(
            "video_too_long",
            f"driving has {frames} frames; at most {settings.max_driving_frames} are accepted",
        )
    return VideoSummary(
        format=kind,
        width=width,
        height=height,
        fps=fps,
        duration=duration,
        frames=frames,
        audio=facts.audio,
        bytes=path.stat().st_size,
    )
