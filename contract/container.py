"""What a video file's container says about it, read from FFmpeg's structured fields, never from text.

ffmpeg's human-readable description mixes the file's own tags into its lines, so a title can
forge a "Duration:" or a "Video: ... 64x64" line; here every number comes from the demuxer's own
fields through PyAV (FFmpeg's libraries). Nothing is decoded: decoders are off while the streams
are opened (a PNG-coded 16000x16000 frame would cost 780 MB to describe otherwise), and the video
packets are counted and timed by reading them, so a header that understates the length or leaves
it out (a live recording) is caught. The file is opened as the demuxer given (its sniffed
container), from a local file only: a playlist or concat script named .mp4 is never parsed as one.

The API and the workers both read their limits from this.
"""

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

OPEN_OPTIONS = {"protocol_whitelist": "file", "codec_whitelist": "none"}  # no decoder may open


class UnreadableVideo(ValueError):
    """The file is not a video this demuxer can read."""


@dataclass(frozen=True)
class ContainerFacts:
    width: int  # as stored; a rotation tag may show it turned
    height: int
    fps: float  # the video stream's average frame rate, else its base rate
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


def read_container(path: Path, demuxer: str, max_packets: int) -> ContainerFacts:
    """The facts of `path` opened as `demuxer`; reading stops after `max_packets` video packets.

    UnreadableVideo when it cannot be opened as that container or has no video stream; MemoryError
    when FFmpeg runs out of memory (a limited probe process).
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
        rate = _rate(video)
        start = container.start_time / av.time_base if container.start_time is not None else 0.0
        declared = container.duration / av.time_base if container.duration and container.duration > 0 else 0.0
        frame_seconds = float(1 / rate) if rate is not None else 0.0  # for packets that give no duration
        packets, first, last, ends, complete = 0, None, None, 0.0, True
        try:
            for packet in container.demux():
                if packet.size == 0 or packet.pts is None or packet.time_base is None:
                    continue
                is_video = packet.stream.index == video.index
                begins = float(packet.pts * packet.time_base)
                if packet.duration:
                    finishes = begins + float(packet.duration * packet.time_base)
                else:
                    finishes = begins + (frame_seconds if is_video else 0.0)
                ends = max(ends, finishes - start)
                if not is_video:
                    continue
                packets += 1
                first = begins if first is None else min(first, begins)
                last = finishes if last is None else max(last, finishes)
                if packets >= max_packets:
                    complete = False
                    break
        except av.error.MemoryError:
            raise MemoryError(f"out of memory reading {path.name}") from None
        except av.error.FFmpegError:
            complete = False
        width, height = video.codec_context.width, video.codec_context.height
        audio = bool(container.streams.audio)
    return ContainerFacts(
        width=width,
        height=height,
        fps=float(rate) if rate is not None else 0.0,
        declared_seconds=declared,
        packets=packets,
        packets_seconds=(last - first) if first is not None and last is not None else 0.0,
        ends_seconds=ends,
        audio=audio,
        complete=complete,
    )
