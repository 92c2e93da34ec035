"""What a video file says about itself, read from FFmpeg's structured fields and the stream's own
headers, never from text.

ffmpeg's human-readable description mixes the file's own tags into its lines, so a title can
forge a "Duration:" or a "Video: ... 64x64" line; here every number comes from the demuxer's own
fields through PyAV (FFmpeg's libraries). The file is opened as the demuxer given (its sniffed
container), from a local file only: a playlist or concat script named .mp4 is never parsed as one.

- Length and rate come from the packets' timestamps: every video packet is read (none decoded), so
  a header that understates the length or leaves it out (a live recording) is caught, and a
  variable frame rate (a phone's clip, or a crafted one) is measured as it is: `fps` is the
  packets' count over their span, which is the rate a decoder resampling by timestamps produces
  exactly `frames` at (engine/media/video_io.py renders at it, so audio stays in sync).
- Frame size comes from the codec: the container and its sample entry may claim 64x64 while the
  stream's own parameter sets say 8192x8192, so with `max_pixels` the first frame is decoded, by a
  decoder told to refuse frames over `decoder_pixels(max_pixels)` before allocating them (FFmpeg's
  max_pixels), single-threaded. A claim already over the limit is refused without decoding.

The API (in a limited child, service/probe.py) and the workers both read their limits from this.
"""

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.logging

OPEN_OPTIONS = {"protocol_whitelist": "file", "codec_whitelist": "none"}  # no decoder opens by itself
FIRST_FRAME_PACKETS = 300  # video packets fed to the decoder, at most, to find the first frame
# FFmpeg's own words when a decoder refuses a frame over max_pixels (libavutil/imgutils.c): its
# numbers are the decoded stream's, printed by FFmpeg, never text from the file
TOO_LARGE_LOG = re.compile(r"Picture size (\d+)x(\d+) exceeds specified max pixel count")


class UnreadableVideo(ValueError):
    """The file is not a video this demuxer can read."""


class FrameTooLarge(ValueError):
    """The video's frames are over the pixel limit; width and height are 0 where FFmpeg did not say."""

    def __init__(self, width: int, height: int, max_pixels: int):
        size = f"{width}x{height}" if width and height else f"over {max_pixels} pixels"
        super().__init__(f"its frames are {size}")
        self.width, self.height, self.max_pixels = width, height, max_pixels


def decoder_pixels(max_pixels: int) -> int:
    """The bound given to a decoder for frames of at most `max_pixels`: FFmpeg checks the frame's
    width padded to its buffer alignment, so a frame just within the limit needs room."""
    return 2 * max_pixels + (1 << 20)


@dataclass(frozen=True)
class ContainerFacts:
    width: int  # the first decoded frame's, when decoded; else the container's claim
    height: int
    rotation: int  # degrees the first frame is shown turned (its display matrix); 0 when not decoded
    fps: float  # packets over their span (timestamps); the header's rate where that is unmeasurable
    declared_seconds: float  # the header's duration; 0 when it has none
    packets: int  # video packets read (each a frame in the containers accepted here)
    packets_seconds: float  # from the first video packet's start to the last one's end
    ends_seconds: float  # the end of the last packet of any stream, from the container's start
    audio: bool
    complete: bool  # False: reading stopped at max_packets, or at an error in the file

    @property
    def seconds(self) -> float:
        """The length as long as the header or the packets make it, whichever is longer."""
        return max(self.declared_seconds, self.packets_seconds)

    @property
    def frames(self) -> int:
        """The frames a decoder resampling at `fps` produces: the packets when all were read."""
        if self.complete and self.packets > 0:
            return self.packets
        return max(self.packets, round(self.seconds * self.fps))

    @property
    def truncated(self) -> bool:
        """The packets stop well before the end the header declares: the file was cut short."""
        if self.declared_seconds <= 0:
            return False
        slack = max(0.5, 2 / self.fps if self.fps > 0 else 0, 0.05 * self.declared_seconds)
        return self.ends_seconds < self.declared_seconds - slack


def _rate(stream: av.video.stream.VideoStream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    return None


class _FirstFrame:
    """Feeds video packets to a bounded decoder until the first frame comes out."""

    def __init__(self, stream: av.video.stream.VideoStream, max_pixels: int | None):
        self.max_pixels = max_pixels
        self.context = stream.codec_context if max_pixels is not None else None
        if self.context is not None:
            self.context.options = {"max_pixels": str(decoder_pixels(max_pixels))}
            self.context.thread_count = 1
        self.frame: av.VideoFrame | None = None
        self.fed = 0

    @property
    def wanted(self) -> bool:
        return self.context is not None and self.frame is None and self.fed < FIRST_FRAME_PACKETS

    def feed(self, packet: av.Packet) -> None:
        """Decode `packet`; FrameTooLarge when the decoder refuses a frame over its bound."""
        self.fed += 1
        self._decode(packet)

    def drain(self) -> None:
        """At the end of the packets, the frames the decoder still holds back (frame threading and
        reordering delay them): a clip of one frame has its frame only here."""
        if self.context is not None and self.frame is None and self.fed > 0:
            self._decode(None)

    def _decode(self, packet: av.Packet | None) -> None:
        previous = av.logging.get_level()
        av.logging.set_level(av.logging.ERROR)
        try:
            with av.logging.Capture(True) as logs:
                try:
                    frames = self.context.decode(packet)
                except av.error.MemoryError:
                    raise MemoryError("out of memory decoding the first frame") from None
                except av.error.FFmpegError:
                    frames = []
        finally:
            av.logging.set_level(previous)
        for _level, _name, message in logs:
            if found := TOO_LARGE_LOG.search(message):
                raise FrameTooLarge(int(found[1]), int(found[2]), self.max_pixels)
        if frames:
            self.frame = frames[0]

    def check(self) -> None:
        """UnreadableVideo when a decoder was asked for and no frame came out of it."""
        if self.context is not None and self.frame is None:
            raise UnreadableVideo(f"no frame could be decoded from the first {self.fed} video packets")


def read_container(
    path: Path, demuxer: str, max_packets: int, max_pixels: int | None = None
) -> ContainerFacts:
    """The facts of `path` opened as `demuxer`; reading stops after `max_packets` video packets.

    With `max_pixels`, the frame size is the decoded first frame's, and FrameTooLarge when it (or
    the container's claim) is over. UnreadableVideo when the file cannot be opened as that
    container or has no video stream; MemoryError when FFmpeg runs out of memory (a limited probe).
    """
    try:
        container = av.open(str(path), format=demuxer, options=OPEN_OPTIONS)
    except av.error.MemoryError:
        raise MemoryError(f"out of memory opening {path.name}") from None
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise UnreadableVideo(f"not a readable {demuxer} file ({type(exc).__name__})") from None
    with container:
        if not container.streams.video:
            raise UnreadableVideo("no video stream")
        video = container.streams.video[0]
        width, height = video.codec_context.width, video.codec_context.height
        if max_pixels is not None and width * height > max_pixels:
            raise FrameTooLarge(width, height, max_pixels)
        first = _FirstFrame(video, max_pixels)
        timing = _read_packets(container, video, max_packets, first)
        first.drain()
        first.check()
        if first.frame is not None:
            width, height = first.frame.width, first.frame.height
            if width * height > max_pixels:
                raise FrameTooLarge(width, height, max_pixels)
        rotation = round(first.frame.rotation) % 360 if first.frame is not None else 0
        audio = bool(container.streams.audio)
    return ContainerFacts(width=width, height=height, rotation=rotation, audio=audio, **timing)


def _span(packet: av.Packet, default_seconds: Fraction) -> tuple[Fraction, Fraction]:
    """When a packet starts and ends, in seconds; `default_seconds` long when it gives no duration."""
    begins = packet.pts * packet.time_base
    return begins, begins + (packet.duration * packet.time_base if packet.duration else default_seconds)


def _read_packets(
    container: av.container.InputContainer,
    video: av.video.stream.VideoStream,
    max_packets: int,
    first: _FirstFrame,
) -> dict:
    """Every packet's timing (video packets counted, the first ones decoded while `first` wants)."""
    rate = _rate(video)
    start = container.start_time / av.time_base if container.start_time is not None else 0.0
    declared = container.duration / av.time_base if container.duration and container.duration > 0 else 0.0
    frame_seconds = 1 / rate if rate is not None else Fraction(0)  # for packets that give no duration
    packets, first_pts, last_end, ends, complete = 0, None, None, 0.0, True
    try:
        for packet in container.demux():
            if packet.size == 0 or packet.pts is None or packet.time_base is None:
                continue
            is_video = packet.stream.index == video.index
            begins, finishes = _span(packet, frame_seconds if is_video else Fraction(0))
            ends = max(ends, float(finishes) - start)
            if not is_video:
                continue
            if first.wanted:
                first.feed(packet)
            packets += 1
            first_pts = begins if first_pts is None else min(first_pts, begins)
            last_end = finishes if last_end is None else max(last_end, finishes)
            if packets >= max_packets:
                complete = False
                break
    except av.error.MemoryError:
        raise MemoryError(f"out of memory reading {container.name}") from None
    except av.error.FFmpegError:
        complete = False
    span = (last_end - first_pts) if packets else Fraction(0)
    measured = Fraction(packets) / span if complete and packets > 1 and span > 0 else None
    fps = measured if measured is not None else rate
    return {
        "fps": float(fps) if fps is not None else 0.0,
        "declared_seconds": declared,
        "packets": packets,
        "packets_seconds": float(span),
        "ends_seconds": ends,
        "complete": complete,
    }
