"""`animate render` end to end on a real clip, and every bad input ending in one line and exit 2."""

import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from engine.media.video_io import probe_video

ANIMATE = [sys.executable, "-m", "cli.main"]


def run_animate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ANIMATE, *map(str, args)], capture_output=True, text=True, timeout=300)


def cut(clip: Path, out: Path, seconds: float, *extra: str) -> Path:
    """A short copy of a real clip (re-encoded so the cut is frame exact)."""
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    cmd = [ffmpeg, "-v", "error", "-y", "-i", str(clip), "-t", str(seconds), *extra, str(out)]
    subprocess.run(cmd, check=True)
    return out


@pytest.fixture(scope="module")
def short_clip(clip, tmp_path_factory) -> Path:
    return cut(clip, tmp_path_factory.mktemp("clips") / "short.mp4", 1.5)


def test_render_keeps_frame_count_rate_audio_and_duration(small_checkpoint, short_clip, portrait, tmp_path):
    out = tmp_path / "out.mp4"
    result = run_animate(
        "render", "--source", portrait, "--driving", short_clip, "--checkpoint", small_checkpoint,
        "--out", out, "--batch-size", "8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    driving, rendered = probe_video(short_clip), probe_video(out)
    assert rendered.frames == driving.frames
    assert rendered.fps == pytest.approx(driving.fps)
    assert rendered.has_audio
    assert rendered.duration == pytest.approx(driving.duration, abs=0.1)
    assert (rendered.width, rendered.height) == (64, 64)
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_render_options_size_absolute_best_start_and_no_audio(
    small_checkpoint, short_clip, portrait, tmp_path
):
    out = tmp_path / "out.mp4"
    result = run_animate(
        "render", "--source", portrait, "--driving", short_clip, "--checkpoint", small_checkpoint,
        "--out", out, "--size", "96", "--driving-start", "best", "--no-audio", "--no-adapt-scale",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rendered = probe_video(out)
    assert (rendered.width, rendered.height, rendered.has_audio) == (96, 96, False)
    absolute = tmp_path / "abs.mp4"
    result = run_animate(
        "render", "--source", portrait, "--driving", short_clip, "--checkpoint", small_checkpoint,
        "--out", absolute, "--mode", "absolute",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert probe_video(absolute).frames == probe_video(short_clip).frames


def test_inspect_prints_the_inferred_architecture(small_checkpoint):
    result = run_animate("inspect", small_checkpoint)
    assert result.returncode == 0, result.stderr
    assert '"num_kp": 10' in result.stdout and '"frame_shape": [' in result.stdout


def _bad_inputs(tmp_path: Path, short_clip: Path, portrait: Path, checkpoint: Path) -> dict:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 100)
    fake_png = tmp_path / "fake.png"
    fake_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    fake_mp4 = tmp_path / "fake.mp4"
    fake_mp4.write_bytes(b"not a video at all" * 50)
    audio_only = tmp_path / "audio.m4a"
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run(
        [ffmpeg, "-v", "error", "-f", "lavfi", "-i", "sine=d=1", "-c:a", "aac", str(audio_only)], check=True
    )
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    good = {"source": portrait, "driving": short_clip, "checkpoint": checkpoint}
    return {
        "unreadable image": {**good, "source": fake_png},
        "text as image": {**good, "source": text},
        "missing image": {**good, "source": tmp_path / "absent.jpg"},
        "not a video": {**good, "driving": fake_mp4},
        "no video stream": {**good, "driving": audio_only},
        "missing checkpoint": {**good, "checkpoint": tmp_path / "absent.pth.tar"},
        "text as checkpoint": {**good, "checkpoint": text},
        "truncated checkpoint": {**good, "checkpoint": truncated},
    }


def test_bad_inputs_give_one_line_exit_2_and_no_output(small_checkpoint, short_clip, portrait, tmp_path):
    cases = _bad_inputs(tmp_path, short_clip, portrait, small_checkpoint)
    for name, inputs in cases.items():
        out = tmp_path / "out" / f"{name.replace(' ', '_')}.mp4"
        out.parent.mkdir(exist_ok=True)
        result = run_animate(
            "render", "--source", inputs["source"], "--driving", inputs["driving"],
            "--checkpoint", inputs["checkpoint"], "--out", out,
        )  # fmt: skip
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("animate: error: "), (name, result.stderr)
        assert "Traceback" not in result.stderr
        assert list(out.parent.iterdir()) == [], name


def test_a_video_that_breaks_mid_stream_leaves_no_output(small_checkpoint, clip, portrait, tmp_path):
    whole = cut(clip, tmp_path / "whole.mp4", 2, "-an", "-movflags", "+faststart")
    broken = tmp_path / "broken.mp4"
    data = whole.read_bytes()
    broken.write_bytes(data[: len(data) * 6 // 10])  # the index says 60 frames; the data stops earlier
    out = tmp_path / "out.mp4"
    result = run_animate(
        "render", "--source", portrait, "--driving", broken, "--checkpoint", small_checkpoint, "--out", out
    )
    assert result.returncode == 2, result.stderr
    assert "truncated" in result.stderr or "decoding failed" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert not list(tmp_path.glob(".*partial*"))


def test_invalid_option_values_exit_2(small_checkpoint, short_clip, portrait, tmp_path):
    out = tmp_path / "o.mp4"
    base = ["render", "--source", portrait, "--driving", short_clip, "--checkpoint", small_checkpoint]
    assert run_animate(*base, "--out", out, "--size", "15").returncode == 2
    assert run_animate(*base, "--out", out, "--driving-start", "9999").returncode == 2
    assert run_animate(*base, "--out", out, "--driving-start", "-3").returncode == 2
    assert run_animate(*base, "--out", tmp_path / "nowhere" / "o.mp4").returncode == 2
    assert not out.exists()


def test_pixels_round_trip_through_the_tensor_helpers():
    from engine.frames import to_frames, to_tensor

    frames = np.random.default_rng(0).integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
    assert np.array_equal(to_frames(to_tensor(frames, "cpu")), frames)
    image = Image.fromarray(frames[0])
    assert image.size == (10, 8)
