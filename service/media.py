"""The API's first look at uploaded media: the type by its magic bytes, then a cheap probe.

The file name and the declared Content-Type are the client's word and are ignored. Images are
opened with Pillow (size checked before pixels are decoded); videos are probed by reading the
container header with ffmpeg, which may only open local files. The worker checks again in full.
"""

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


def probe_video(path: Path, kind: str, max_seconds: float) -> VideoSummary:
    """Reads the container header with ffmpeg; 422 when there is no video stream or it is too long."""
    reader = imageio_ffmpeg.read_frames(str(path), input_params=["-protocol_whitelist", "file"])
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration):
        raise ApiError(422, "invalid_video", f"driving is not a readable {kind.upper()} video") from None
    finally:
        reader.close()
    fps = float(meta.get("fps") or 0)
    duration = float(meta.get("duration") or 0)
    width, height = meta.get("source_size") or meta.get("size") or (0, 0)
    if fps <= 0 or width <= 0 or height <= 0:
        raise ApiError(422, "invalid_video", "driving has no decodable video stream")
    if duration > max_seconds:
        raise ApiError(
            422, "video_too_long", f"driving lasts {duration:.1f} s; at most {max_seconds:g} s are accepted"
        )
    return VideoSummary(
        format=kind,
        width=int(width),
        height=int(height),
        fps=fps,
        duration=duration,
        frames=round(duration * fps),
        audio=bool(meta.get("audio_codec")),
        bytes=path.stat().st_size,
    )
