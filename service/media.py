"""The API's first look at uploaded media: the type by its magic bytes, then a check in a limited child.

The file name and the declared Content-Type are the client's word and are ignored. Both checks run
in a child process with memory, time and concurrency limits (service/probe.py). Images are judged
by their decoding cost from their headers first (pixels, and a JPEG's progressive scans:
contract/images.py), then decoded whole. Videos are described from their container's structured
fields and their packets' timestamps, with their frame size from the first frame, decoded by a
decoder that refuses frames over MAX_DRIVING_PIXELS before allocating them (contract/container.py):
no tag and no sample-entry claim can pass for a length or a size, and only local files are opened,
with the demuxer of the sniffed container forced, so a playlist or concat script cannot make FFmpeg
open anything else. The worker checks again.
"""

import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from contract.container import FrameTooLarge, UnreadableVideo, read_container
from contract.images import ImageFacts, ImageRefused, check_image
from contract.settings import Settings
from service.errors import ApiError
from service.probe import ProbeFailed, Prober

VIDEO_DEMUXERS = {"mp4": "mov", "mov": "mov", "webm": "matroska", "mkv": "matroska"}  # the allow-list
SNIFF_BYTES = 64


@dataclass(frozen=True)
class VideoSummary:
    format: str
    width: int
    height: int
    fps: float
    duration: float
    frames: int  # from the packets' timestamps (estimated from the header where they were not all read)
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


def probe_image(
    path: Path,
    kind: str,
    max_pixels: int,
    prober: Prober | None = None,
    cancel: threading.Event | None = None,
) -> ImageFacts:
    """The size as displayed; 400 when too costly to decode (pixels, scans), truncated or not `kind`.
    Checked by `prober` in a limited child (in this process without one)."""
    try:
        if prober is None:
            return check_image(path, kind, max_pixels)
        return prober.image(path, kind, max_pixels, "source", cancel)
    except ImageRefused as exc:
        raise ApiError(400, exc.code, exc.message, field="source") from None
    except ProbeFailed as exc:
        raise ApiError(400, "invalid_image", f"source could not be checked: {exc}", field="source") from None


def _bad_video(code: str, message: str) -> ApiError:
    return ApiError(400, code, message, field="driving")


def probe_video(path: Path, kind: str, settings: Settings, prober: Prober | None = None) -> VideoSummary:
    """The container's own fields, its packets' timestamps and its first frame's size, read by
    `prober` in a limited child process (in this process without one); 400 when it has no video
    stream or its length, frame count or frame size is over the limits."""
    demuxer, max_packets = VIDEO_DEMUXERS[kind], settings.max_driving_frames + 1
    max_pixels = settings.max_driving_pixels
    try:
        if prober is None:
            facts = read_container(path, demuxer, max_packets, max_pixels)
        else:
            facts = prober.read(path, demuxer, max_packets, max_pixels)
    except FrameTooLarge as exc:
        size = f"{exc.width}x{exc.height}" if exc.width else f"over {max_pixels} pixels a frame"
        message = f"driving is {size}; at most {max_pixels} pixels a frame are accepted"
        raise _bad_video("video_too_large", message) from None
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
