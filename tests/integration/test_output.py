"""Output formats, loops and posters, decoded back with the bundled ffmpeg.

Frames are synthetic and numbered by their brightness, so each decoded frame tells which one it is.
"""

import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from engine.errors import RenderError
from engine.media.output import FORMATS, RenderOutput, frame_step, loop_length, output_size
from engine.media.video_io import probe_video
from tests.conftest import MEDIA, need_shared

WIDTH, HEIGHT, FRAMES = 96, 80, 12


def numbered(index: int) -> np.ndarray:
    """Frame `index`: its left half at level 20 + 18 * index, its right half the opposite."""
    frame = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    frame[:, : WIDTH // 2] = 20 + 18 * index
    frame[:, WIDTH // 2 :] = 235 - 18 * index
    return frame


def decode(path: Path, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """Every frame of `path` as (T, height, width, 3) uint8, by the bundled ffmpeg."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path)]
    command += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def indices(frames: np.ndarray) -> list[int]:
    """Which numbered frame each decoded frame is."""
    return [round((float(f[:, : WIDTH // 2 - 8].mean()) - 20) / 18) for f in frames]


def write(tmp_path: Path, name: str, loop: bool = False, **options) -> tuple[Path, object]:
    fmt = FORMATS[name]
    path = tmp_path / f"out{fmt.extension}"
    output = RenderOutput(path, fmt, (WIDTH, HEIGHT), (WIDTH, HEIGHT), 10.0, loop, **options)
    output.write(np.stack([numbered(i) for i in range(FRAMES)]))
    return path, output.finish()


def loop_count(path: Path) -> int | None:
    """The loop count a GIF (NETSCAPE2.0 block) or animated WebP (ANIM chunk) declares; 0: forever."""
    data = path.read_bytes()
    if data[:3] == b"GIF":
        at = data.find(b"NETSCAPE2.0")
        return int.from_bytes(data[at + 14 : at + 16], "little") if at >= 0 else None
    at = data.find(b"ANIM")
    return int.from_bytes(data[at + 12 : at + 14], "little") if at >= 0 else None


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_format_decodes_back_with_every_frame_in_order(name, tmp_path):
    path, summary = write(tmp_path, name)
    assert indices(decode(path)) == list(range(FRAMES))
    assert (summary.format, summary.mime_type, summary.frames) == (name, FORMATS[name].mime_type, FRAMES)
    assert summary.bytes == path.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary file is left"


@pytest.mark.parametrize("name", list(FORMATS))
def test_a_loop_plays_forward_then_back_and_never_jumps(name, tmp_path):
    path, summary = write(tmp_path, name, loop=True)
    played = indices(decode(path))
    forward = list(range(FRAMES))
    assert played == forward + forward[-2:0:-1]
    assert summary.frames == len(played) == loop_length(FRAMES) == 2 * FRAMES - 2
    on_repeat = played + played[:1]
    assert max(abs(b - a) for a, b in zip(on_repeat, on_repeat[1:], strict=False)) == 1, "one step at most"
    if name in ("gif", "webp"):
        assert loop_count(path) == 0, "plays forever"
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "the spool and intermediates are gone"


def test_gif_and_webp_loop_forever_even_without_the_ping_pong(tmp_path):
    for name in ("gif", "webp"):
        path, _ = write(tmp_path, name)
        assert loop_count(path) == 0


def test_audio_only_in_formats_that_carry_it_when_asked_and_never_with_a_loop(tmp_path, clip):
    webm, summary = write(tmp_path, "webm", audio_from=clip)
    assert summary.audio and probe_video(webm).has_audio
    webm.unlink()
    webm, summary = write(tmp_path, "webm")
    assert not summary.audio and not probe_video(webm).has_audio
    webm.unlink()
    webm, summary = write(tmp_path, "webm", loop=True, audio_from=clip)
    assert not summary.audio and not probe_video(webm).has_audio
    gif, summary = write(tmp_path, "gif", audio_from=clip)
    assert not summary.audio


@pytest.mark.parametrize("name, loop", [("mp4", False), ("gif", True)])
def test_poster_is_a_jpeg_of_the_requested_frame(name, loop, tmp_path):
    poster = tmp_path / "poster.jpg"
    path, summary = write(tmp_path, name, loop=loop, poster_path=poster, poster_frame=7)
    with Image.open(poster) as image:
        assert image.format == "JPEG" and image.size == (WIDTH, HEIGHT)
        pixels = np.asarray(image.convert("RGB"))
    assert indices(pixels[None]) == [7]
    assert summary.poster == "poster.jpg"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, "poster.jpg"])


def test_a_poster_frame_past_the_end_fails_and_leaves_nothing(tmp_path):
    fmt = FORMATS["gif"]
    output = RenderOutput(tmp_path / "out.gif", fmt, (WIDTH, HEIGHT), (WIDTH, HEIGHT), 10.0, True, None,
                          tmp_path / "poster.jpg", FRAMES)  # fmt: skip
    output.write(np.stack([numbered(i) for i in range(FRAMES)]))
    with pytest.raises(RenderError) as failed:
        output.finish()
    assert failed.value.code == "invalid_option"
    output.abort()
    assert list(tmp_path.iterdir()) == []


def test_mail_formats_are_capped_in_size_and_rate():
    assert output_size(1280, 720, None, FORMATS["gif"]) == (480, 270)
    assert output_size(600, 704, None, FORMATS["webp"]) == (546, 640)
    assert output_size(600, 704, None, FORMATS["mp4"]) == (600, 704)
    assert output_size(601, 703, None, FORMATS["mp4"]) == (602, 704), "even sides for yuv420p"
    assert output_size(600, 704, 1024, FORMATS["gif"]) == (480, 480)
    assert [frame_step(fps, FORMATS["gif"]) for fps in (10, 15, 25, 30, 60)] == [1, 1, 2, 2, 4]
    assert frame_step(60, FORMATS["webm"]) == 1


def test_cli_formats_are_the_engines():
    from cli.main import OUTPUT_FORMATS

    assert tuple(OUTPUT_FORMATS) == tuple(FORMATS)


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory) -> Path:
    """A second of the shared d3 clip (30 fps, with audio) and of d0 (no audio)."""
    out = tmp_path_factory.mktemp("clips")
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    for name in ("d3", "d0"):
        source = need_shared(MEDIA / "clips" / f"{name}.mp4")
        subprocess.run(
            [ffmpeg, "-v", "error", "-i", str(source), "-t", "1", str(out / f"{name}.mp4")], check=True
        )
    return out


def test_render_command_writes_a_looping_webm_and_its_poster(
    small_checkpoint, portrait, short_clip, tmp_path
):
    from tests.integration.test_cli import run_animate

    out, poster = tmp_path / "out.webm", tmp_path / "cover.jpg"
    base = [
        "render",
        "--source",
        portrait,
        "--checkpoint",
        small_checkpoint,
        "--crop",
        "none",
        "--batch-size",
        "8",
    ]
    result = run_animate(*base, "--driving", short_clip / "d3.mp4", "--out", out, "--format", "webm",
                         "--loop", "--poster", poster, "--poster-frame", "3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    driving = probe_video(short_clip / "d3.mp4")
    assert "video/webm" in result.stderr and f"{out.stat().st_size:,} bytes" in result.stderr
    played = decode(out, 64, 64)
    assert len(played) == 2 * driving.frames - 2
    assert not probe_video(out).has_audio, "a loop has no audio"
    with Image.open(poster) as image:
        assert image.format == "JPEG" and image.size == (64, 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cover.jpg", "out.webm"]


def test_render_skips_frames_for_mail_formats_and_takes_audio_only_when_present(
    small_checkpoint, portrait, short_clip, tmp_path
):
    from engine import load_checkpoint
    from engine.animator import Animator
    from engine.media.video_io import load_image
    from engine.pipeline import RenderOptions, VideoPipeline

    renderer = Animator(load_checkpoint(small_checkpoint))
    image = load_image(portrait)
    driving = probe_video(short_clip / "d3.mp4")
    gif = VideoPipeline(renderer).render(
        image, short_clip / "d3.mp4", tmp_path / "out.gif", RenderOptions(crop="none", format="gif")
    )
    assert (gif.frames, gif.fps) == (-(-driving.frames // 2), driving.fps / 2), (
        "30 fps driving: every other frame"
    )
    assert len(decode(tmp_path / "out.gif", 64, 64)) == gif.frames
    assert (gif.format, gif.mime_type, gif.bytes) == (
        "gif",
        "image/gif",
        (tmp_path / "out.gif").stat().st_size,
    )
    for clip, sound in (("d3", True), ("d0", False)):
        webm = VideoPipeline(renderer).render(image, short_clip / f"{clip}.mp4", tmp_path / f"{clip}.webm",
                               RenderOptions(crop="none", format="webm"))  # fmt: skip
        assert webm.audio is sound and probe_video(tmp_path / f"{clip}.webm").has_audio is sound, clip


def test_render_command_rejects_bad_output_options(small_checkpoint, portrait, short_clip, tmp_path):
    from tests.integration.test_cli import run_animate

    base = [
        "render",
        "--source",
        portrait,
        "--checkpoint",
        small_checkpoint,
        "--driving",
        short_clip / "d3.mp4",
    ]
    cases = {
        "extension and format disagree": (
            [*base, "--out", tmp_path / "o.mp4", "--format", "gif"],
            "does not match",
        ),
        "poster frame past the end": (
            [*base, "--out", tmp_path / "o.gif", "--poster", tmp_path / "p.jpg", "--poster-frame", "999"],
            "past the last frame",
        ),
        "negative poster frame": (
            [*base, "--out", tmp_path / "o.gif", "--poster", tmp_path / "p.jpg", "--poster-frame", "-1"],
            "--poster-frame",
        ),
        "poster folder missing": (
            [*base, "--out", tmp_path / "o.gif", "--poster", tmp_path / "no" / "p.jpg"],
            "poster folder",
        ),
    }
    for name, (args, message) in cases.items():
        result = run_animate(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], (name, result.stderr)
    assert list(tmp_path.iterdir()) == []


def test_clients_choose_formats_loops_and_posters_through_the_contract():
    from typing import get_args

    from pydantic import ValidationError

    from contract.job import JobResult, ProgressReport
    from contract.options import AnimationOptions, OutputFormatName
    from contract.storage import POSTER, result_name
    from engine.pipeline import RenderOptions

    assert get_args(OutputFormatName) == tuple(FORMATS), "the contract names exactly the engine's formats"
    options = AnimationOptions(format="webp", loop="true", poster="1", poster_frame="4")  # as a form sends
    assert (options.format, options.loop, options.poster, options.poster_frame) == ("webp", True, True, 4)
    assert RenderOptions(**options.model_dump()).format == "webp"
    for bad in ({"format": "avi"}, {"poster_frame": -1}, {"loop": "sometimes"}):
        with pytest.raises(ValidationError) as refused:
            AnimationOptions(**bad)
        assert refused.value.errors()[0]["loc"] == (next(iter(bad)),)
    old = JobResult(frames=3, fps=25, width=64, height=64, audio=False, driving_start=0, precision="fp32")
    assert (old.format, old.mime_type, old.loop, old.poster) == ("mp4", "video/mp4", False, None)
    assert [result_name(name) for name in FORMATS] == [
        "result.mp4",
        "result.webm",
        "result.gif",
        "result.webp",
    ]
    assert POSTER == "poster.jpg"
    with pytest.raises(ValidationError):
        ProgressReport(stage="encoding", overall_percent=101)
