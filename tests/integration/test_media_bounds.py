"""The engine's side of media truth (issue 26, classes 6-8): real ffmpeg, PyAV and Pillow, and the
`animate` command as a process.

- What probe_video counts is what read_frames yields, for variable-rate clips too, and a render
  keeps the driving video's timing (its length is its audio's).
- A JPEG too costly to decode is refused from its markers; a decode stops when the job is canceled.
"""

import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from engine.errors import InvalidImage, RenderCanceled
from engine.media.video_io import load_image, probe_video, read_frames
from tests.hostile_media import burst_mkv, gradient, h264_growing, image_bytes, make_clip, scan_bomb, vfr_clip
from tests.service_stack import ROOT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("make", "name", "frames", "seconds"),
    [(vfr_clip, "phone.mp4", 90, 4.467), (burst_mkv, "burst.mkv", 80, 4.841)],
)
def test_the_frames_counted_are_the_frames_decoded(tmp_path, make, name, frames, seconds):
    clip = make(tmp_path / name)
    info = probe_video(clip)
    assert (info.frames, round(info.frames / info.fps, 3)) == (frames, seconds)
    assert sum(1 for _ in read_frames(clip, 32, 32, info)) == frames


def test_a_one_frame_video_is_measured_and_read(tmp_path):
    """H.264 holds a frame back until the decoder is drained: a clip of one frame gives none unless the
    probe drains its decoder at the end of the packets."""
    clip = make_clip(tmp_path / "one.mp4", 0.1, 64, 10, "-preset", "medium")  # frame threads: a delay
    info = probe_video(clip)
    assert (info.width, info.height, info.frames) == (64, 64, 1)
    assert sum(1 for _ in read_frames(clip, 32, 32, info)) == 1


def test_a_stream_whose_frames_grow_is_not_decoded_past_its_first_size(tmp_path):
    from engine.errors import VideoDecodeError

    clip = h264_growing(tmp_path / "grow.mp4", 64, 1024)
    info = probe_video(clip)
    assert (info.width, info.height, info.frames) == (64, 64, 2)
    with pytest.raises(VideoDecodeError, match="1024x1024"):
        list(read_frames(clip, 32, 32, info))


def test_render_of_a_variable_rate_clip_is_as_long_as_its_audio(small_checkpoint, tmp_path):
    clip, out = vfr_clip(tmp_path / "phone.mp4"), tmp_path / "out.mp4"
    (tmp_path / "source.png").write_bytes(image_bytes(gradient(64, 64), "PNG"))
    command = [sys.executable, "-m", "cli.main", "render", "--source", str(tmp_path / "source.png")]
    command += [
        "--driving",
        str(clip),
        "--checkpoint",
        str(small_checkpoint),
        "--out",
        str(out),
        "--crop",
        "none",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with av.open(str(out)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        video_seconds = float(video.duration * video.time_base)
        audio_seconds = float(audio.duration * audio.time_base)
        assert video.frames == 90
    assert video_seconds == pytest.approx(audio_seconds, abs=1 / 20.15), (video_seconds, audio_seconds)


def test_a_jpeg_repeating_a_scan_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(scan_bomb(1000, 1000, 100_000))  # decoded, over a second of one core
    started = time.monotonic()
    with pytest.raises(InvalidImage) as refused:
        load_image(bomb, 16_000_000)
    assert refused.value.code == "image_too_large" and "scans" in str(refused.value)
    assert time.monotonic() - started < 0.5


def test_a_decode_stops_when_the_job_is_canceled(tmp_path):
    """Pillow decodes as it reads, a block at a time: the cancel flag is asked before each block."""
    rng = np.random.default_rng(0)
    photo = tmp_path / "noise.jpg"
    Image.fromarray(rng.integers(0, 256, (1500, 1500, 3), dtype=np.uint8)).save(photo, quality=95)
    asked = []

    def cancel_on_the_third_ask() -> bool:
        asked.append(time.monotonic())
        return len(asked) >= 3

    with pytest.raises(RenderCanceled):
        load_image(photo, 16_000_000, cancel_on_the_third_ask)
    assert len(asked) == 3, "the decode went on after the job was canceled"
    never = []
    assert load_image(photo, 16_000_000, lambda: never.append(1) or False).shape == (1500, 1500, 3)
    assert len(never) > 3, "a whole decode asks many times"


def test_images_within_the_bound_still_load(tmp_path):
    progressive = tmp_path / "progressive.jpg"
    gradient(640, 480).save(progressive, "JPEG", progressive=True)
    assert load_image(progressive).shape == (480, 640, 3)
    assert load_image(Path(progressive), 16_000_000, lambda: False).shape == (480, 640, 3)
