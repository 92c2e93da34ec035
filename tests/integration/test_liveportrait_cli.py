"""`animate render` and `animate inspect` with a LivePortrait folder, on a real portrait and a real
talking-head clip from ../shared/media.

The weights are the shared fixture's random ones (published layout, 64x64 crops, 128x128 out), so
the video shows no face: random weights are fine for the plumbing checked here (the folder found
and loaded, the face cropped and pasted back, every frame rendered and encoded)."""

import json

import pytest

from engine.media.video_io import load_image, probe_video
from tests.families import liveportrait_at_64
from tests.integration.test_cli import cut, run_animate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return liveportrait_at_64(tmp_path_factory.mktemp("lp"))


@pytest.fixture(scope="module")
def short_clip(clip, tmp_path_factory):
    return cut(clip, tmp_path_factory.mktemp("clips") / "short.mp4", 0.5)


def test_render_a_real_photo_by_a_real_clip_with_paste_back(folder, short_clip, portrait, tmp_path):
    out = tmp_path / "out.mp4"
    done = run_animate(
        "render", "--source", portrait, "--driving", short_clip, "--checkpoint", folder, "--out", out,
        "--paste-back", "--region", "expression", "--batch-size", "8",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rendered = probe_video(out)
    height, width = load_image(portrait).shape[:2]
    assert rendered.frames == probe_video(short_clip).frames
    assert (rendered.width, rendered.height) == (width - width % 2, height - height % 2)


def test_render_without_paste_back_is_the_models_output_size(folder, short_clip, portrait, tmp_path):
    out = tmp_path / "out.mp4"
    done = run_animate(
        "render", "--source", portrait, "--driving", short_clip, "--checkpoint", folder, "--out", out,
        "--mode", "absolute", "--no-stitching",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rendered = probe_video(out)
    assert (rendered.width, rendered.height, rendered.frames) == (128, 128, probe_video(short_clip).frames)


def test_retargeting_without_landmark_onnx_is_one_line_exit_2(folder, short_clip, portrait, tmp_path):
    done = run_animate(
        "render", "--source", portrait, "--driving", short_clip, "--checkpoint", folder,
        "--out", tmp_path / "out.mp4", "--lip-retargeting",
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "lip_retargeting" in lines[0] and "landmark.onnx" in lines[0]
    assert not (tmp_path / "out.mp4").exists()


def test_inspect_describes_the_folder(folder):
    done = run_animate("inspect", folder)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["family"] == "liveportrait" and report["num_kp"] == 21
    assert report["frame_shape"] == [128, 128] and report["input_shape"] == [64, 64]
    assert report["landmarks"] is None
