"""Reading images and videos and writing MP4, through the ffmpeg binary that imageio-ffmpeg ships.

ffmpeg runs as a separate process, so decoding and encoding overlap with the model on their own
cores. Decoding accepts local files only: `-protocol_whitelist file` keeps a playlist disguised as a
video from reading other files or reaching the network.
"""

import logging
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from worker.errors import InvalidImage, InvalidVideo, StorageError, VideoDecodeError

SAFE_INPUT = ["-protocol_whitelist", "file"]
# imageio-ffmpeg warns on every resized read; resizing in ffmpeg is what we want.
logging.getLogger("imageio_ffmpeg").setLevel(logging.ERROR)


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    duration: float
    frames: int
    has_audio: bool


def load_image(path: str | Path, max_pixels: int = 40_000_000) -> np.ndarray:
    """(H, W, 3) uint8 RGB, EXIF orientation applied, alpha flattened onto white."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(white, rgba)
            return np.array(img.convert("RGB"))
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"{Path(path).name}: image too large ({exc})", "image_too_large") from exc
    except FileNotFoundError as exc:
        raise InvalidImage(f"image not found: {path}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"{Path(path).name} is not a readable image ({exc})") from exc


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Anti-aliased resize of an (H, W, 3) uint8 image."""
    if image.shape[:2] == (height, width):
        return np.array(image)
    return np.array(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def probe_video(path: str | Path) -> VideoInfo:
    """Size, frame rate, duration, frame count and audio of a video, without decoding it."""
    path = Path(path)
    if not path.is_file():
        raise InvalidVideo(f"video not found: {path}")
    reader = imageio_ffmpeg.read_frames(str(path), input_params=SAFE_INPUT)
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as exc:
        raise InvalidVideo(f"{path.name} is not a readable video") from exc
    finally:
        reader.close()
    try:
        frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except (OSError, RuntimeError, ValueError):
        frames = 0
    fps = float(meta.get("fps") or 0)
    duration = float(meta.get("duration") or 0)
    width, height = meta.get("size") or meta.get("source_size") or (0, 0)  # size: after autorotation
    if frames <= 0 and fps > 0:
        frames = round(duration * fps)
    if fps <= 0 or width <= 0 or height <= 0 or frames <= 0:
        raise InvalidVideo(f"{path.name} has no decodable video stream")
    return VideoInfo(width, height, fps, duration, frames, bool(meta.get("audio_codec")))


def read_frames(path: str | Path, height: int, width: int) -> Iterator[np.ndarray]:
    """Frames as (height, width, 3) uint8 RGB, resized by ffmpeg (area filter) as they are decoded.

    `-xerror` makes ffmpeg stop at the first corrupt packet and the exit status is checked, so a
    video that breaks halfway fails instead of silently yielding a shorter clip.
    """
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", *SAFE_INPUT, "-i", str(path),
        "-xerror", "-an", "-vf", f"scale={width}:{height}:flags=area",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
    ]  # fmt: skip
    frame_bytes = height * width * 3
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
        try:
            while raw := process.stdout.read(frame_bytes):
                if len(raw) < frame_bytes:
                    break
                yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
            status = process.wait()
            if status != 0 or (raw and len(raw) < frame_bytes):
                log.seek(0)
                lines = log.read().decode(errors="replace").strip().splitlines()
                reason = re.sub(r"^\[[^]]*\]\s*", "", lines[0]) if lines else f"ffmpeg status {status}"
                raise VideoDecodeError(f"{Path(path).name}: decoding failed ({reason})")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()


class Mp4Writer:
    """H.264 yuv420p MP4 with +faststart, optionally with another file's audio track copied in."""

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: float,
        audio_from: str | Path | None = None,
        out_size: tuple[int, int] | None = None,
    ):
        output_params = ["-movflags", "+faststart", "-preset", "veryfast"]
        if out_size is not None and out_size != (width, height):
            output_params += ["-vf", f"scale={out_size[0]}:{out_size[1]}:flags=lanczos"]
        self.path = Path(path)
        self._writer = imageio_ffmpeg.write_frames(
            str(self.path),
            (width, height),
            fps=Fraction(fps).limit_denominator(100000),
            codec="libx264",
            pix_fmt_out="yuv420p",
            quality=8,
            macro_block_size=2,
            input_params=[],
            output_params=output_params,
            audio_path=str(audio_from) if audio_from else None,
            audio_codec="aac" if audio_from else None,
            ffmpeg_log_level="error",
        )
        try:
            self._writer.send(None)
        except (OSError, RuntimeError) as exc:
            raise StorageError(f"cannot start the encoder for {self.path.name}: {exc}") from exc

    def write(self, frame: np.ndarray) -> None:
        try:
            self._writer.send(np.ascontiguousarray(frame))
        except (OSError, RuntimeError, BrokenPipeError) as exc:
            raise StorageError(f"encoding {self.path.name} failed: {exc}") from exc

    def close(self) -> None:
        try:
            self._writer.close()
        except (OSError, RuntimeError) as exc:
            raise StorageError(f"finishing {self.path.name} failed: {exc}") from exc
