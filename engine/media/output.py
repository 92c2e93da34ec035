"""What a render writes: the video in one of the formats product pages use, and its poster.

Formats (`RenderOptions.format`):

- mp4 (default): H.264 yuv420p, +faststart, AAC audio from the driving video.
- webm: VP9 (libvpx-vp9; VP8 where the bundled ffmpeg lacks it), Opus audio.
- gif: for e-mail and marketplaces. At most GIF_SIDE pixels on the long side and MAX_ANIMATED_FPS
  frames per second (driving frames are skipped evenly, so fewer are rendered); one palette for
  the whole video (palettegen), ordered dithering (paletteuse), looping forever. The palette needs
  every frame before the first is written, so frames go to a lossless intermediate file first
  (x264 in RGB at qp 0) and two more ffmpeg passes read it back, instead of frames held in memory.
- webp: animated WebP (libwebp_anim), at most WEBP_SIDE pixels and MAX_ANIMATED_FPS, looping
  forever; encoded as the frames come.

`loop`: the video plays forward, then backward to its second frame (ping-pong), so played on repeat
it never jumps: the frame after the last is the first's neighbour. A cross-fade was the other
choice; it shows two faces at once while it fades. The backward half is read back from a lossless
spool on disk, a segment at a time, not from memory. No audio with a loop: it would not loop with it.

Audio goes only into formats that carry it (mp4, webm), when asked, present, and not looping.

Poster: a JPEG of the output frame `poster_frame` (an index into the forward frames, after any
frame skipping; default 0: the frame the video starts on, so poster and video meet without a jump),
at the video's own size.

Every file is written to a hidden temporary name next to its final one and renamed only when the
whole render succeeded; on any failure nothing is left behind.
"""

import contextlib
import functools
import math
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

from engine.errors import RenderError, StorageError
from engine.media.video_io import MP4_OUTPUT, FrameEncoder, feed_ffmpeg, read_frames, run_ffmpeg

GIF_SIDE = 480
WEBP_SIDE = 640
MAX_ANIMATED_FPS = 15.0
POSTER_QUALITY = 90


@dataclass(frozen=True)
class OutputFormat:
    name: str
    mime_type: str
    extension: str
    carries_audio: bool
    max_side: int | None = None  # long side, pixels
    max_fps: float | None = None


FORMATS = {
    "mp4": OutputFormat("mp4", "video/mp4", ".mp4", True),
    "webm": OutputFormat("webm", "video/webm", ".webm", True),
    "gif": OutputFormat("gif", "image/gif", ".gif", False, GIF_SIDE, MAX_ANIMATED_FPS),
    "webp": OutputFormat("webp", "image/webp", ".webp", False, WEBP_SIDE, MAX_ANIMATED_FPS),
}


@functools.cache
def available_encoders() -> frozenset[str]:
    """The encoder names the bundled ffmpeg lists (`ffmpeg -encoders`)."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-encoders"]
    listing = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True).stdout
    return frozenset(parts[1] for line in listing.splitlines() if len(parts := line.split()) > 1)


def webm_options() -> tuple[list[str], list[str]]:
    """(video, audio) ffmpeg options for WebM: VP9 when the binary has it, else VP8; Opus."""
    encoders = available_encoders()
    if "libvpx-vp9" in encoders:
        video = ["-c:v", "libvpx-vp9", "-crf", "32", "-b:v", "0", "-row-mt", "1"]
    else:
        video = ["-c:v", "libvpx", "-crf", "10", "-b:v", "2M"]
    video += ["-pix_fmt", "yuv420p", "-deadline", "realtime", "-cpu-used", "6", "-f", "webm"]
    audio = ["-c:a", "libopus", "-b:a", "96k"] if "libopus" in encoders else ["-c:a", "opus", "-strict", "-2"]
    return video, audio


def frame_step(fps: float, fmt: OutputFormat) -> int:
    """Every how many driving frames one is kept so the output stays within the format's rate."""
    if fmt.max_fps is None or fps <= fmt.max_fps:
        return 1
    return math.ceil(fps / fmt.max_fps - 1e-9)


def output_size(width: int, height: int, size: int | None, fmt: OutputFormat) -> tuple[int, int]:
    """(width, height) of the written video: `size` square if given, within the format's cap, even."""
    if size:
        width = height = size
    if fmt.max_side is not None and max(width, height) > fmt.max_side:
        scale = fmt.max_side / max(width, height)
        width, height = max(2, round(width * scale)), max(2, round(height * scale))
    return width + width % 2, height + height % 2


def loop_length(frames: int) -> int:
    """Frames of a ping-pong loop over `frames` forward frames: forward, then back to the second."""
    return frames if frames < 3 else 2 * frames - 2


def encoding_units(frames: int, fmt: OutputFormat, loop: bool) -> int:
    """The `encoding` stage's frames once `frames` are rendered: the backward half of a loop, the
    GIF's two passes over the whole video, and one for the final flush."""
    total = loop_length(frames) if loop else frames
    backward = total - frames
    return backward + (2 * total if fmt.name == "gif" else 0) + 1


def partial_path(path: Path, suffix: str = "") -> Path:
    """A hidden temporary name next to `path`, renamed onto it once complete."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial{suffix or path.suffix}")


def lossless_video() -> list[str]:
    """ffmpeg options for a fast lossless RGB video in Matroska: x264 in RGB at qp 0, else FFV1."""
    if "libx264rgb" in available_encoders():
        return ["-c:v", "libx264rgb", "-qp", "0", "-preset", "ultrafast", "-f", "matroska"]
    return ["-c:v", "ffv1", "-f", "matroska"]


class FrameSpool:
    """Frames kept on disk, losslessly, to be read back in reverse order: short lossless videos of
    SEGMENT frames each, decoded one at a time, so memory holds one segment at most."""

    SEGMENT = 16

    def __init__(self, path: Path, width: int, height: int, fps: float):
        self.path, self.width, self.height, self.fps = path, width, height, fps
        self.segments: list[tuple[Path, int]] = []  # (file, frames)
        self.encoder: FrameEncoder | None = None

    def append(self, frame: np.ndarray) -> None:
        if self.encoder is None:
            segment = self.path.with_name(f"{self.path.name}.{len(self.segments):05d}")
            self.encoder = FrameEncoder(segment, self.width, self.height, self.fps, lossless_video())
            self.segments.append((segment, 0))
        self.encoder.write(frame)
        segment, count = self.segments[-1]
        self.segments[-1] = (segment, count + 1)
        if count + 1 == self.SEGMENT:
            self._close_segment()

    def _close_segment(self) -> None:
        if self.encoder is not None:
            self.encoder.close()
            self.encoder = None

    def backwards(self, skip_last: int = 0) -> Iterator[np.ndarray]:
        """The frames from the last (less `skip_last`) to the first."""
        self._close_segment()
        skip = skip_last
        for segment, count in reversed(self.segments):
            frames = list(read_frames(segment, self.height, self.width))
            if len(frames) != count:
                raise StorageError(f"the loop's spool lost frames ({len(frames)} of {count})")
            kept = frames[: max(count - skip, 0)]
            skip = max(skip - count, 0)
            yield from reversed(kept)

    def close(self) -> None:
        with contextlib.suppress(StorageError):
            self._close_segment()
        for segment, _ in self.segments:
            segment.unlink(missing_ok=True)


@dataclass(frozen=True)
class OutputSummary:
    frames: int
    width: int
    height: int
    fps: float
    audio: bool
    format: str
    mime_type: str
    bytes: int
    loop: bool
    poster: str | None  # the poster's file name


class RenderOutput:
    """Takes a render's frames in order and writes the result in `fmt`, and its poster.

    frame_size: (width, height) of the frames given; out_size: of the video written.
    """

    def __init__(
        self,
        path: Path,
        fmt: OutputFormat,
        frame_size: tuple[int, int],
        out_size: tuple[int, int],
        fps: float,
        loop: bool = False,
        audio_from: Path | None = None,
        poster_path: Path | None = None,
        poster_frame: int = 0,
    ):
        self.path, self.fmt, self.loop = path, fmt, loop
        self.frame_size, self.out_size, self.fps = frame_size, out_size, fps
        self.audio = audio_from is not None and fmt.carries_audio and not loop
        self.poster_path, self.poster_frame = poster_path, poster_frame
        self.poster: np.ndarray | None = None
        self.count = 0
        self.partial = partial_path(path)
        self.intermediate = partial_path(path, ".mkv") if fmt.name == "gif" else None
        self.palette = partial_path(path, ".png") if fmt.name == "gif" else None
        self.poster_partial = partial_path(poster_path) if poster_path is not None else None
        self.spool = FrameSpool(partial_path(path, ".spool"), *frame_size, fps) if loop else None
        try:
            self.encoder = self._encoder(audio_from if self.audio else None)
        except BaseException:
            self.abort()
            raise

    def _encoder(self, audio_from: Path | None) -> FrameEncoder:
        width, height = self.frame_size
        name = self.fmt.name
        if name == "mp4":
            output, audio = MP4_OUTPUT, ["-acodec", "aac"]
        elif name == "webm":
            output, audio = webm_options()
        elif name == "webp":
            output, audio = ["-c:v", "libwebp_anim", "-pix_fmt", "yuv420p", "-quality", "80"], []
            output += ["-loop", "0", "-f", "webp"]
        else:  # gif: a lossless intermediate, made into a GIF by finish()
            output, audio = lossless_video(), []
        target = self.intermediate or self.partial
        return FrameEncoder(target, width, height, self.fps, output, audio_from, audio, self.out_size)

    def write(self, frames: np.ndarray) -> None:
        """(N, h, w, 3) uint8 frames, the next ones of the video."""
        for frame in frames:
            if self.count == self.poster_frame and self.poster_path is not None:
                self.poster = np.array(frame)
            if self.spool is not None and self.count > 0:
                self.spool.append(frame)
            self.encoder.write(frame)
            self.count += 1

    def finish(self, on_progress: Callable[[int, int], None] | None = None) -> OutputSummary:
        """Writes the backward half of a loop, finishes the encoding, runs the GIF's passes, writes
        the poster and renames everything into place. on_progress(done, total) in encoding units."""
        if self.count == 0:
            raise RenderError("no frame was rendered", "invalid_video")
        if self.poster_path is not None and self.poster is None:
            last = self.count - 1
            message = f"poster_frame {self.poster_frame} is past the last frame ({last})"
            raise RenderError(message, "invalid_option")
        total = encoding_units(self.count, self.fmt, self.loop)
        done = 0

        def report(units: int) -> None:
            if on_progress is not None:
                on_progress(min(units, total), total)

        report(0)
        if self.spool is not None and self.count >= 3:
            for frame in self.spool.backwards(skip_last=1):
                self.encoder.write(frame)
                done += 1
                report(done)
        self.encoder.close()
        frames = loop_length(self.count) if self.loop else self.count
        if self.fmt.name == "gif":
            self._gif(lambda n: report(done + n), lambda n: report(done + frames + n))
        if self.poster is not None:
            self._write_poster()
        try:
            if self.poster_partial is not None:
                self.poster_partial.replace(self.poster_path)
            self.partial.replace(self.path)
        except OSError as exc:
            raise StorageError(f"cannot write {self.path}: {exc}") from exc
        finally:
            self._remove_temporaries()
        report(total)
        width, height = self.out_size
        poster = self.poster_path.name if self.poster_path is not None else None
        return OutputSummary(
            frames, width, height, self.fps, self.audio, self.fmt.name, self.fmt.mime_type,
            self.path.stat().st_size, self.loop, poster,
        )  # fmt: skip

    def _gif(self, palette_frames: Callable[[int], None], gif_frames: Callable[[int], None]) -> None:
        """The palette from one pass over the intermediate, then the GIF from a second."""
        frames = loop_length(self.count) if self.loop else self.count
        palette = ["-f", "matroska", "-i", "pipe:0", "-vf", "palettegen", "-update", "1"]
        feed_ffmpeg(
            self.intermediate,
            [*palette, "-f", "image2", str(self.palette)],
            "the GIF palette",
            lambda share: palette_frames(int(share * frames)),
        )
        use = "[0:v][1:v]paletteuse=dither=bayer:bayer_scale=4:diff_mode=rectangle"
        inputs = ["-f", "matroska", "-i", str(self.intermediate), "-f", "png_pipe", "-i", str(self.palette)]
        run_ffmpeg(
            [*inputs, "-lavfi", use, "-loop", "0", "-f", "gif", str(self.partial)], "the GIF", gif_frames
        )

    def _write_poster(self) -> None:
        image = Image.fromarray(self.poster)
        if image.size != self.out_size:
            image = image.resize(self.out_size, Image.Resampling.LANCZOS)
        try:
            image.save(self.poster_partial, "JPEG", quality=POSTER_QUALITY, optimize=True)
        except OSError as exc:
            raise StorageError(f"cannot write {self.poster_path}: {exc}") from exc

    def _remove_temporaries(self) -> None:
        if self.spool is not None:
            self.spool.close()
        for path in (self.intermediate, self.palette):
            if path is not None:
                path.unlink(missing_ok=True)

    def abort(self) -> None:
        """Stops the encoder and removes every file this output started."""
        if hasattr(self, "encoder"):
            with contextlib.suppress(RenderError, OSError):
                self.encoder.close()
        self._remove_temporaries()
        for path in (self.partial, self.poster_partial):
            if path is not None:
                path.unlink(missing_ok=True)
