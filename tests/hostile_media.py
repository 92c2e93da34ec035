"""Small media files made by the tests: valid clips and images, and hostile ones built byte by byte."""

import io
import os
import re
import struct
import subprocess
import zlib
from fractions import Fraction
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
from PIL import Image

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def make_clip(out: Path, seconds: float = 1.0, size: int = 64, fps: int = 10, *args: str) -> Path:
    """A synthetic H.264 clip (ffmpeg's test pattern) of `size` px, `fps`, `seconds`."""
    source = ["-f", "lavfi", "-i", f"testsrc=size={size}x{size}:rate={fps}"]
    codec = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    subprocess.run(
        [FFMPEG, "-v", "error", "-y", *source, "-t", str(seconds), *codec, *args, str(out)], check=True
    )
    return out


def ffmpeg_bytes(*args: str) -> bytes:
    """What ffmpeg writes to stdout (a non-seekable output: no duration or index in the header)."""
    return subprocess.run([FFMPEG, "-v", "error", *args, "pipe:1"], check=True, capture_output=True).stdout


def image_bytes(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def gradient(width: int = 48, height: int = 32) -> Image.Image:
    """An RGB image whose every pixel tells where it is: red grows to the right, green downwards."""
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 60)], axis=-1))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels but whose data holds a few hundred bytes:
    refusing it by its header gives `image_too_large`; decoding it would find it truncated."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\0" * 600)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG with its frame header (SOF0) rewritten to claim width x height."""
    data = bytearray(image_bytes(gradient(), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_coded_mkv(out: Path, size: int, frames: int = 2, noise: bool = False) -> Path:
    """An MKV of `frames` PNG-coded size x size frames, black: a few hundred kilobytes that decode to
    size x size x 3 bytes each (the attack used 16000 px: 1.6 MB of file, 780 MB to decode one);
    noise: frames that do not compress, as large in the file as decoded."""
    deflate = zlib.compressobj(1 if noise else 9)
    rows = (b"\0" + (os.urandom(size * 3) if noise else b"\0" * size * 3) for _ in range(size))
    data = b"".join(deflate.compress(row) for row in rows) + deflate.flush()
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )
    frame = out.with_suffix(".png")
    frame.write_bytes(png)
    loop = ["-framerate", "10", "-stream_loop", str(frames - 1), "-i", str(frame)]
    subprocess.run(
        [FFMPEG, "-v", "error", "-y", *loop, "-c:v", "copy", "-f", "matroska", str(out)], check=True
    )
    frame.unlink()
    return out


def vfr_clip(out: Path) -> Path:
    """A phone-like variable-rate clip: 90 frames whose intervals alternate 1/30 and 2/30 s (about
    20 fps over 4.47 s, while FFmpeg guesses 30 fps from the shortest interval), with 4.46 s of audio."""
    inputs = ["-f", "lavfi", "-i", "testsrc=size=64x64:rate=30", "-f", "lavfi", "-i", "sine=f=440:d=4.46"]
    timing = [
        "-vf",
        "setpts='(floor(N/2)*3+mod(N,2))/30/TB'",
        "-fps_mode",
        "vfr",
        "-enc_time_base",
        "1/90000",
    ]
    codecs = [
        "-frames:v",
        "90",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
    ]
    subprocess.run([FFMPEG, "-v", "error", "-y", *inputs, *timing, *codecs, str(out)], check=True)
    return out


def _grey_frames(size: int, pts: list[int], rate: int) -> list[av.VideoFrame]:
    """Frames of size x size, each a different grey, at the given timestamps (units of 1/rate s)."""
    frames = []
    for index, stamp in enumerate(pts):
        frame = av.VideoFrame.from_ndarray(
            np.full((size, size, 3), index * 3 % 256, np.uint8), format="rgb24"
        )
        frame.pts, frame.time_base = stamp, Fraction(1, rate)
        frames.append(frame.reformat(format="yuv420p"))
    return frames


def burst_mkv(out: Path, frames: int = 80, last_at: float = 4.84) -> Path:
    """A crafted variable-rate Matroska clip: `frames - 1` frames a millisecond apart, then one at
    `last_at` s. FFmpeg guesses 1000 fps from the intervals: decoded at a constant guessed rate it
    gives about last_at x 1000 frames, while its packets are `frames`."""
    stamps = [*range(frames - 1), round(last_at * 1000)]
    with av.open(str(out), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=1000, options={"preset": "ultrafast", "bf": "0"})
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for frame in _grey_frames(64, stamps, 1000):
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out


def _annexb_packets(size: int, count: int) -> list[bytes]:
    """`count` H.264 frames of size x size as Annex B (start codes, parameter sets in the stream)."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width = encoder.height = size
    encoder.pix_fmt, encoder.time_base, encoder.framerate = "yuv420p", Fraction(1, 10), 10
    encoder.options = {"preset": "ultrafast", "bf": "0"}
    packets = []
    for frame in _grey_frames(size, list(range(count)), 10):
        packets += encoder.encode(frame)
    return [bytes(packet) for packet in packets + encoder.encode(None)]


def h264_claiming(out: Path, real: int, claimed: int = 64) -> Path:
    """An MP4 whose track header and sample entry (avc1 with its avcC parameter sets) describe a
    claimed x claimed stream, while the stream carries its own parameter sets in its first sample,
    which decoders follow: its frames are real x real. Two grey frames, a few kilobytes."""
    small = make_clip(out.with_name(f".{out.name}.claim.mp4"), 0.2, claimed, 10)
    with av.open(str(small)) as template, av.open(str(out), "w", format="mp4") as container:
        stream = container.add_stream_from_template(template.streams.video[0])
        for index, packet in enumerate(_annexb_packets(real, 2)):
            _mux_sample(container, stream, _length_prefixed(packet), index)
    small.unlink()
    return out


def _length_prefixed(annexb: bytes) -> bytes:
    """Annex B NAL units (after start codes) as MP4 samples carry them (after 4-byte lengths)."""
    nals = [nal for nal in re.split(b"\x00\x00\x00\x01|\x00\x00\x01", annexb) if nal]
    return b"".join(len(nal).to_bytes(4, "big") + nal for nal in nals)


def _mux_sample(container, stream, data: bytes, index: int) -> None:
    """One keyframe sample at 10 fps (stream time base 1/10240), as the index-th."""
    sample = av.Packet(data)
    sample.pts = sample.dts = index * 1024
    sample.duration, sample.time_base, sample.stream = 1024, Fraction(1, 10240), stream
    sample.is_keyframe = True
    container.mux(sample)


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of a JPEG's segments after SOI; a scan's entropy-coded data is its own."""
    segments, pos = [], 2
    while data[pos + 1] != 0xD9:
        marker = data[pos + 1]
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:
            end = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])").search(data, end).start()
        segments.append((marker, pos, end))
        pos = end
    return segments


def scan_bomb(width: int, height: int, size: int) -> bytes:
    """A progressive JPEG of `size` bytes whose luma refinement scan (12 bytes on a flat image) is
    repeated until the file is that large: decoders accept the repeats and pass over every pixel
    for each (a 1000x1000, 100 KB one takes over a second; 1 MB at 4000x4000, minutes)."""
    data = image_bytes(Image.new("RGB", (width, height), (120, 130, 140)), "JPEG", progressive=True)
    scans = [segment for segment in _jpeg_segments(data) if segment[0] == 0xDA]
    _, start, end = scans[-1]  # libjpeg's last scan: the luma AC refinement, the costliest per byte
    repeats = max(1, (size - len(data)) // (end - start))
    return data[:end] + data[start:end] * repeats + b"\xff\xd9"


def h264_growing(out: Path, first: int = 64, then: int = 1024) -> Path:
    """An MP4 whose first frame is first x first and whose second frame brings its own parameter
    sets for then x then: a check that decodes only the first frame sees a small video."""
    small = make_clip(out.with_name(f".{out.name}.first.mp4"), 0.1, first, 10)
    with av.open(str(small)) as template, av.open(str(out), "w", format="mp4") as container:
        stream = container.add_stream_from_template(template.streams.video[0])
        samples = [bytes(next(template.demux(video=0))), _length_prefixed(_annexb_packets(then, 1)[0])]
        for index, data in enumerate(samples):
            _mux_sample(container, stream, data, index)
    small.unlink()
    return out
