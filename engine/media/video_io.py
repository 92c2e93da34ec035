"""Reading images and videos and encoding frames, through the ffmpeg binary that imageio-ffmpeg ships.

ffmpeg runs as a separate process, so decoding and encoding overlap with the model on their own
cores. A video is described (size, rate, length, frames) from its container's fields, its packets'
timestamps and its first frame, decoded by a bounded decoder, through PyAV (contract/container.py),
never from ffmpeg's text, which a file's tags can imitate. Every input (probe, decode, the audio
copied into a result) is a local file of an allowed container, named by its own magic bytes and
forced with `-f`, read through the `file` protocol only: an HLS playlist, an ffconcat script or any
other playlist renamed `.mp4` is never opened as one, so it cannot make ffmpeg read another file or
reach the network.

Timing: a video is decoded onto a constant grid at the rate its timestamps give (`VideoInfo.fps`:
its frames over their span) by ffmpeg's `fps` filter, each output frame the one shown at that time,
and at most `VideoInfo.frames` of them; so a variable-rate clip (a phone's) is rendered at its real
timing, as long as its audio, and a clip whose timestamps make ffmpeg guess 1000 fps cannot turn 80
counted frames into thousands. The decoder refuses frames larger than the first one probed (a
stream may change its size midway) before allocating them.

Images: the decoding cost is judged from the headers first (pixels, a JPEG's scans:
contract/images.py), and a decode polls `should_cancel` as it reads, so a canceled job stops there.
"""

import contextlib
import io
import logging
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from contract.container import FrameTooLarge, UnreadableVideo, read_container
from contract.images import ImageRefused, check_cost
from engine.errors import InvalidImage, InvalidVideo, RenderCanceled, StorageError, VideoDecodeError

SAFE_INPUT = ["-protocol_whitelist", "file"]
SNIFF_BYTES = 16
MAX_PROBE_PACKETS = 10_000_000  # more than any clip a worker would render
MAX_VIDEO_PIXELS = 8192 * 8192  # a driving frame's size when no smaller limit is given (the CLI)
ALIGN_SLACK = 64  # pixels FFmpeg may pad a frame's width (and a codec its height) to before checking it
JPEG_MAGIC = b"\xff\xd8\xff"
# imageio-ffmpeg warns on every resized read; resizing in ffmpeg is what we want.
logging.getLogger("imageio_ffmpeg").setLevel(logging.ERROR)


@dataclass(frozen=True)
class VideoInfo:
    width: int  # as shown (a quarter-turned phone clip has them swapped), from the first decoded frame
    height: int
    fps: float  # its frames over their span: what `read_frames` resamples at
    duration: float
    frames: int  # what `read_frames` yields at most
    has_audio: bool


def _never() -> bool:
    return False


class _CancellableFile(io.FileIO):
    """A file whose every read first asks `should_cancel`: Pillow decodes as it reads, a block at a
    time, so a canceled job stops decoding within a block's work."""

    def __init__(self, path: str | Path, should_cancel: Callable[[], bool]):
        super().__init__(path, "rb")
        self.should_cancel = should_cancel

    def read(self, size: int = -1) -> bytes:
        if self.should_cancel():
            raise RenderCanceled("the job was canceled")
        return super().read(size)


def _check_decoding_cost(path: Path, max_pixels: int) -> None:
    """InvalidImage (image_too_large) when a JPEG's headers say decoding it costs more than the bound
    (other formats' pixel counts are read from their headers by Pillow)."""
    with path.open("rb") as file:
        if file.read(3) != JPEG_MAGIC:
            return
    try:
        check_cost(path.read_bytes(), "jpeg", max_pixels, name=path.name)
    except ImageRefused as exc:
        raise InvalidImage(exc.message, exc.code) from None


def load_image(
    path: str | Path, max_pixels: int = 40_000_000, should_cancel: Callable[[], bool] | None = None
) -> np.ndarray:
    """(H, W, 3) uint8 RGB, EXIF orientation applied, alpha flattened onto white, grayscale (8 or
    16 bit) and CMYK converted. The decoding cost (pixels, a JPEG's scans) is checked before any
    pixel is decoded; RenderCanceled as soon as `should_cancel()` says so while decoding."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    path = Path(path)
    try:
        _check_decoding_cost(path, max_pixels)
        with _CancellableFile(path, should_cancel or _never) as file, Image.open(file) as img:
            if img.width * img.height > max_pixels:
                raise Image.DecompressionBombError(f"{img.width}x{img.height} is over {max_pixels} pixels")
            return _rgb(ImageOps.exif_transpose(img))
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"{path.name}: image too large ({exc})", "image_too_large") from exc
    except FileNotFoundError as exc:
        raise InvalidImage(f"image not found: {path}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"{path.name} is not a readable image ({exc})") from exc


def _rgb(img: Image.Image) -> np.ndarray:
    """A decoded image as (H, W, 3) uint8 RGB: deep grayscale scaled, alpha flattened onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.array(img.convert("RGB"))


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


def probe_video(path: str | Path, max_pixels: int = MAX_VIDEO_PIXELS) -> VideoInfo:
    """Size as shown, frame rate, duration, frame count and audio of a video, from the container's
    own fields, its packets' timestamps and its first frame (contract/container.py): no tag or
    container claim can pass for either.

    A frame over `max_pixels` (by the codec's own headers) is refused before it is decoded. A file
    whose packets stop well before the end its header declares is truncated: VideoDecodeError.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidVideo(f"video not found: {path.name}")
    demux = safe_input(path)[-1]
    try:
        facts = read_container(path, demux, MAX_PROBE_PACKETS, max_pixels)
    except FrameTooLarge as exc:
        size = f"{exc.width}x{exc.height}" if exc.width else "larger"
        raise InvalidVideo(f"{path.name} is {size}: over {max_pixels} pixels a frame") from None
    except UnreadableVideo as exc:
        raise InvalidVideo(f"{path.name} is not a readable video ({exc})") from None
    width, height, fps = facts.width, facts.height, facts.fps
    if fps <= 0 or width <= 0 or height <= 0 or facts.frames <= 0:
        raise InvalidVideo(f"{path.name} has no decodable video stream")
    if facts.truncated:  # Matroska just ends where it was cut; MP4 fails on decoding, see read_frames
        raise VideoDecodeError(
            f"{path.name} is truncated: its data ends at {facts.ends_seconds:.1f} s of the "
            f"{facts.declared_seconds:.1f} s its header declares"
        )
    if facts.rotation % 180 == 90:  # a phone's portrait clip stored sideways: decoding turns it
        width, height = height, width
    return VideoInfo(width, height, fps, facts.seconds, facts.frames, facts.audio)


def _decoding_bounds(info: VideoInfo | None) -> tuple[list[str], list[str], list[str]]:
    """(input options, filters, output options) that decode `info`'s frames at its timing, at most
    `info.frames` of them, each at most as large as the first; none for a file of our own (every
    decoded frame once)."""
    if info is None:
        return [], [], []
    rate = Fraction(info.fps).limit_denominator(1_000_000)
    largest = (info.width + ALIGN_SLACK) * (info.height + ALIGN_SLACK)  # FFmpeg pads the width it checks
    return ["-max_pixels", str(largest)], [f"fps={rate}"], ["-frames:v", str(info.frames)]


def read_frames(
    path: str | Path, height: int, width: int, info: VideoInfo | None = None
) -> Iterator[np.ndarray]:
    """Frames as (height, width, 3) uint8 RGB, resized by ffmpeg (area filter) as they are decoded.

    With `info` (probe_video's), the frames are resampled by their timestamps at `info.fps`, at most
    `info.frames` of them, none larger than `info`'s size; without, every decoded frame comes once.
    `-xerror` makes ffmpeg stop at the first corrupt packet and the exit status is checked, so a
    video that breaks halfway fails instead of silently yielding a shorter clip.
    """
    bounds, timing, most = _decoding_bounds(info)
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", *bounds, *safe_input(path),
        "-i", str(path), "-xerror", "-an", "-vf", ",".join([*timing, f"scale={width}:{height}:flags=area"]),
        *most, "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
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
                reason = re.sub(r"^(\[[^]]*\]\s*)+", "", lines[0]) if lines else f"ffmpeg status {status}"
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
