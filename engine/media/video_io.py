"""Reading images and videos and encoding frames, through the ffmpeg binary that imageio-ffmpeg ships.

ffmpeg runs as a separate process, so decoding and encoding overlap with the model on their own
cores. A video is described (size, rate, length, frames) from its container's fields through PyAV
(contract/container.py), never from ffmpeg's text, which a file's tags can imitate. Every input
(probe, decode, the audio copied into a result) is a local file of an
allowed container, named by its own magic bytes and forced with `-f`, read through the `file`
protocol only: an HLS playlist, an ffconcat script or any other playlist renamed `.mp4` is never
opened as one, so it cannot make ffmpeg read another file or reach the network.
"""

import contextlib
import logging
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from contract.container import UnreadableVideo, read_container
from engine.errors import InvalidImage, InvalidVideo, StorageError, VideoDecodeError

SAFE_INPUT = ["-protocol_whitelist", "file"]
SNIFF_BYTES = 16
MAX_PROBE_PACKETS = 10_000_000  # more than any clip a worker would render
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
    """(H, W, 3) uint8 RGB, EXIF orientation applied, alpha flattened onto white, grayscale (8 or
    16 bit) and CMYK converted. The size is checked before any pixel is decoded."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:
                raise Image.DecompressionBombError(f"{img.width}x{img.height} is over {max_pixels} pixels")
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8))
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


def demuxer(head: bytes) -> str | None:
    """The ffmpeg demuxer for a file starting with `head`, if its container is one we read."""
    if head[4:8] == b"ftyp":
        return "mov"  # MP4, MOV, M4V
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"  # MKV, WebM
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def safe_input(path: str | Path) -> list[str]:
    """ffmpeg input options for `path`: local files only, its container's demuxer forced."""
    try:
        with open(path, "rb") as file:
            found = demuxer(file.read(SNIFF_BYTES))
    except OSError as exc:
        raise InvalidVideo(f"cannot read {Path(path).name}: {exc.strerror}") from exc
    if found is None:
        raise InvalidVideo(f"{Path(path).name} is not an MP4, MOV, MKV, WebM, AVI or GIF video")
    return [*SAFE_INPUT, "-f", found]


def _shown_turned(path: Path, demux: str) -> bool:
    """Whether the first frame carries a quarter-turn rotation (a phone's portrait clip stored
    sideways): decoding applies it, so the frames come out with width and height swapped."""
    try:
        with av.open(str(path), format=demux, options={"protocol_whitelist": "file"}) as container:
            frame = next(container.decode(video=0), None)
    except (av.error.FFmpegError, ValueError):
        return False
    return frame is not None and round(frame.rotation) % 180 == 90


def probe_video(path: str | Path, max_pixels: int | None = None) -> VideoInfo:
    """Size as shown, frame rate, duration, frame count and audio of a video, from the container's
    own fields and its packets (contract/container.py): no tag in the file can pass for either.

    With `max_pixels`, a larger frame size is refused before any frame is decoded. A file whose
    packets stop well before the end its header declares is truncated: VideoDecodeError.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidVideo(f"video not found: {path.name}")
    demux = safe_input(path)[-1]
    try:
        facts = read_container(path, demux, MAX_PROBE_PACKETS)
    except UnreadableVideo as exc:
        raise InvalidVideo(f"{path.name} is not a readable video ({exc})") from None
    width, height, fps = facts.width, facts.height, facts.fps
    if fps <= 0 or width <= 0 or height <= 0 or facts.frames <= 0:
        raise InvalidVideo(f"{path.name} has no decodable video stream")
    if max_pixels is not None and width * height > max_pixels:
        raise InvalidVideo(f"{path.name} is {width}x{height}: over {max_pixels} pixels a frame")
    if facts.truncated:  # Matroska just ends where it was cut; MP4 fails on decoding, see read_frames
        raise VideoDecodeError(
            f"{path.name} is truncated: its data ends at {facts.ends_seconds:.1f} s of the "
            f"{facts.declared_seconds:.1f} s its header declares"
        )
    if _shown_turned(path, demux):
        width, height = height, width
    frames = facts.packets if facts.complete and facts.packets > 0 else facts.frames
    return VideoInfo(width, height, fps, facts.seconds, frames, facts.audio)


def read_frames(path: str | Path, height: int, width: int) -> Iterator[np.ndarray]:
    """Frames as (height, width, 3) uint8 RGB, resized by ffmpeg (area filter) as they are decoded.

    `-xerror` makes ffmpeg stop at the first corrupt packet and the exit status is checked, so a
    video that breaks halfway fails instead of silently yielding a shorter clip.
    """
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", *safe_input(path), "-i", str(path),
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


class FrameEncoder:
    """An ffmpeg process that encodes raw RGB frames, written to it one by one, into `path`.

    `output` holds the options that choose the codec and container; `audio` those for the audio
    track taken from `audio_from`, which is opened like any other input (`safe_input`). Frames are
    scaled to `out_size` (lanczos) when it differs from width x height.
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: float,
        output: list[str],
        audio_from: str | Path | None = None,
        audio: list[str] | None = None,
        out_size: tuple[int, int] | None = None,
    ):
        self.path = Path(path)
        rate = Fraction(fps).limit_denominator(100000)
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-nostdin", "-v", "error"]
        command += ["-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{width}x{height}", "-pix_fmt", "rgb24"]
        command += ["-r", str(rate), "-i", "-"]
        if audio_from is not None:
            command += [*safe_input(audio_from), "-i", str(audio_from), "-map", "0:v:0", "-map", "1:a:0"]
            command += audio or []
        else:
            command += ["-an"]
        if out_size is not None and tuple(out_size) != (width, height):
            command += ["-vf", f"scale={out_size[0]}:{out_size[1]}:flags=lanczos"]
        command += [*output, str(self.path)]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        try:
            self._process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log
            )
        except OSError as exc:
            self._log.close()
            raise StorageError(f"cannot start the encoder for {self.path.name}: {exc}") from exc

    def _reason(self) -> str:
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"ffmpeg status {self._process.returncode}"

    def write(self, frame: np.ndarray) -> None:
        try:
            self._process.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).data)
        except (OSError, ValueError) as exc:
            self._process.wait()
            raise StorageError(f"encoding {self.path.name} failed: {self._reason()}") from exc

    def close(self) -> None:
        """Finish the file; StorageError when ffmpeg could not write all of it. Closing again is a no-op."""
        if self._log.closed:
            return
        try:
            if not self._process.stdin.closed:
                self._process.stdin.close()
        except OSError:
            pass
        status = self._process.wait()
        try:
            if status != 0:
                raise StorageError(f"finishing {self.path.name} failed: {self._reason()}")
        finally:
            self._log.close()


MP4_VIDEO = ["-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", "10", "-preset", "veryfast"]
MP4_OUTPUT = [*MP4_VIDEO, "-movflags", "+faststart", "-f", "mp4"]


class Mp4Writer(FrameEncoder):
    """H.264 yuv420p MP4 with +faststart, optionally with another file's audio track (AAC).

    An odd frame size is padded to even by scaling, as yuv420p requires.
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: float,
        audio_from: str | Path | None = None,
        out_size: tuple[int, int] | None = None,
    ):
        out_size = out_size or (width + width % 2, height + height % 2)
        super().__init__(path, width, height, fps, MP4_OUTPUT, audio_from, ["-acodec", "aac"], out_size)


def run_ffmpeg(arguments: list[str], what: str, on_frames: Callable[[int], None] | None = None) -> None:
    """Runs ffmpeg with `arguments` (inputs, filters, output), reporting the frames it has output so
    far to `on_frames` as it goes; StorageError saying what failed (`what`) when it fails."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-nostdin", "-v", "error", "-nostats"]
    command += ["-stats_period", "0.25", "-progress", "pipe:1", *arguments]
    with tempfile.TemporaryFile() as log:
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
        except OSError as exc:
            raise StorageError(f"cannot start ffmpeg for {what}: {exc}") from exc
        try:
            for line in process.stdout:
                if line.startswith(b"frame=") and on_frames is not None:
                    with contextlib.suppress(ValueError):
                        on_frames(int(line[6:]))
            status = process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
        if status != 0:
            log.seek(0)
            lines = log.read().decode(errors="replace").strip().splitlines()
            raise StorageError(f"{what} failed: {lines[-1] if lines else f'ffmpeg status {status}'}")


def feed_ffmpeg(
    source: Path, arguments: list[str], what: str, on_fraction: Callable[[float], None] | None = None
) -> None:
    """Runs ffmpeg with `source` (a file this process wrote) streamed to its standard input, for
    passes that output nothing until the end (a palette): progress is the share of bytes fed."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-nostats", *arguments]
    total = max(source.stat().st_size, 1)
    with tempfile.TemporaryFile() as log, open(source, "rb") as data:
        try:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
        except OSError as exc:
            raise StorageError(f"cannot start ffmpeg for {what}: {exc}") from exc
        try:
            sent = 0
            while chunk := data.read(1 << 20):
                process.stdin.write(chunk)
                sent += len(chunk)
                if on_fraction is not None:
                    on_fraction(sent / total)
            process.stdin.close()
            status = process.wait()
        except BrokenPipeError:
            status = process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        if status != 0:
            log.seek(0)
            lines = log.read().decode(errors="replace").strip().splitlines()
            raise StorageError(f"{what} failed: {lines[-1] if lines else f'ffmpeg status {status}'}")
