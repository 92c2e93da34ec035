"""The API's first look at uploaded media: the type by its magic bytes, then a cheap probe.

The file name and the declared Content-Type are the client's word and are ignored. Images are
opened with Pillow (size checked before pixels are decoded). Videos are described by ffmpeg from
their container header without decoding a frame (a quarter of the CPU time of a decoding probe,
which matters with many clients), and ffmpeg may only open local files. The worker checks again.
"""

import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import imageio_ffmpeg
from PIL import Image, UnidentifiedImageError

from service.errors import ApiError

IMAGE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
VIDEO_FORMATS = ("mp4", "mov", "webm", "mkv")
SNIFF_BYTES = 64


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


def probe_image(path: Path, kind: str, max_pixels: int) -> ImageSummary:
    """Opens and decodes the image; 422 when it is not what its magic bytes promised."""
    try:
        with Image.open(path, formats=[IMAGE_FORMATS[kind]]) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ApiError(
                    422,
                    "image_too_large",
                    f"source is {width}x{height}; at most {max_pixels} pixels are accepted",
                )
            img.load()
    except ApiError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ApiError(
            422, "invalid_image", f"source is not a readable {kind.upper()} image ({exc})"
        ) from None
    return ImageSummary(kind, width, height, path.stat().st_size)


def _header_fields(text: str) -> tuple[float, int, int, float, bool] | None:
    """Duration, width, height, fps and audio from ffmpeg's description of its input; None: no video."""
    video = re.search(r"Stream #\d+:\d+\S*: Video: (.*)", text)
    if video is None:
        return None
    size = re.search(r", (\d{1,5})x(\d{1,5})\b", video.group(1))
    rate = re.search(r", ([\d.]+)(k?) (?:fps|tbr)\b", video.group(1))
    duration = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", text)
    if size is None or rate is None:
        return None
    width, height = int(size.group(1)), int(size.group(2))
    rotation = re.search(r"rotation of (-?[\d.]+) degrees", text)
    if rotation and round(float(rotation.group(1))) % 180 == 90:
        width, height = height, width  # players show it turned, and so does the result
    fps = float(rate.group(1)) * (1000 if rate.group(2) else 1)
    seconds = 0.0
    if duration:
        hours, minutes, secs = duration.groups()
        seconds = int(hours) * 3600 + int(minutes) * 60 + float(secs)
    return seconds, width, height, fps, bool(re.search(r"Stream #\d+:\d+\S*: Audio:", text))


def probe_video(path: Path, kind: str, max_seconds: float) -> VideoSummary:
    """ffmpeg describes the container (no frame is decoded); 422 when there is no video or it is too long."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-protocol_whitelist", "file"]
    try:
        described = subprocess.run([*command, "-i", str(path)], capture_output=True, timeout=30).stderr
    except subprocess.TimeoutExpired:
        raise ApiError(422, "invalid_video", "driving could not be read in time") from None
    fields = _header_fields(described.decode("utf-8", "replace"))
    if fields is None:
        raise ApiError(422, "invalid_video", f"driving is not a readable {kind.upper()} video")
    duration, width, height, fps = fields[:4]
    if fps <= 0 or width <= 0 or height <= 0:
        raise ApiError(422, "invalid_video", "driving has no decodable video stream")
    if duration > max_seconds:
        raise ApiError(
            422, "video_too_long", f"driving lasts {duration:.1f} s; at most {max_seconds:g} s are accepted"
        )
    return VideoSummary(
        format=kind,
        width=width,
        height=height,
        fps=fps,
        duration=duration,
        frames=round(duration * fps),
        audio=fields[4],
        bytes=path.stat().st_size,
    )
