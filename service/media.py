"""The API's first look at uploaded media: the type by its magic bytes, then a cheap probe.

The file name and the declared Content-Type are the client's word and are ignored. Images are
opened with Pillow, which reads the header first: a size over MAX_PIXELS (a decompression bomb) is
refused before any pixel is decoded. Videos are described by ffmpeg from their container header
without decoding a frame (a quarter of the CPU time of a decoding probe, which matters with many
clients); ffmpeg may only open local files, with the demuxer of the sniffed container forced, so a
playlist or concat script cannot make it open anything else. The worker checks again.
"""

import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import imageio_ffmpeg
from PIL import Image, UnidentifiedImageError

from contract.settings import Settings
from service.errors import ApiError

IMAGE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
VIDEO_DEMUXERS = {"mp4": "mov", "mov": "mov", "webm": "matroska", "mkv": "matroska"}  # the allow-list
SNIFF_BYTES = 64
EXIF_ORIENTATION = 0x0112
PROBE_TIMEOUT = 30


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
        raise _bad_image("invalid_image", f"source is not a readable {kind.upper()} image ({exc})") from None
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


def _bad_video(code: str, message: str) -> ApiError:
    return ApiError(400, code, message, field="driving")


def _ffmpeg_describe(path: Path, kind: str, *output: str) -> str:
    """ffmpeg's stderr about `path`, opened as `kind`'s demuxer from a local file only."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-protocol_whitelist", "file"]
    command += ["-f", VIDEO_DEMUXERS[kind], "-i", str(path), *output]
    try:
        done = subprocess.run(command, capture_output=True, timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise _bad_video("invalid_video", "driving could not be read in time") from None
    return done.stderr.decode("utf-8", "replace")


def _measured_seconds(path: Path, kind: str) -> float:
    """The length of a video whose header does not say (a live recording): its packets, not decoded."""
    described = _ffmpeg_describe(path, kind, "-map", "0:v:0", "-c", "copy", "-f", "null", "-")
    times = re.findall(r"time=(\d+):(\d\d):(\d\d(?:\.\d+)?)", described)
    if not times:
        return 0.0
    hours, minutes, secs = times[-1]
    return int(hours) * 3600 + int(minutes) * 60 + float(secs)


def probe_video(path: Path, kind: str, settings: Settings) -> VideoSummary:
    """ffmpeg describes the container (no frame is decoded); 400 when it has no video stream or
    its length, frame count or frame size is over the limits."""
    fields = _header_fields(_ffmpeg_describe(path, kind))
    if fields is None:
        raise _bad_video("invalid_video", f"driving is not a readable {kind.upper()} video")
    duration, width, height, fps = fields[:4]
    if fps <= 0 or width <= 0 or height <= 0:
        raise _bad_video("invalid_video", "driving has no decodable video stream")
    if width * height > settings.max_driving_pixels:
        raise _bad_video(
            "video_too_large",
            f"driving is {width}x{height}; at most {settings.max_driving_pixels} pixels a frame are accepted",
        )
    if duration <= 0:
        duration = _measured_seconds(path, kind)
    if duration <= 0:
        raise _bad_video("invalid_video", "driving has no measurable length")
    if duration > settings.max_driving_seconds:
        raise _bad_video(
            "video_too_long",
            f"driving lasts {duration:.1f} s; at most {settings.max_driving_seconds:g} s are accepted",
        )
    frames = round(duration * fps)
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
        audio=fields[4],
        bytes=path.stat().st_size,
    )
