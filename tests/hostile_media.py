"""Small media files made by the tests: valid clips and images, and hostile ones built byte by byte."""

import io
import os
import struct
import subprocess
import zlib
from pathlib import Path

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
