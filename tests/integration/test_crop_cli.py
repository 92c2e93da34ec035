"""`animate crop` and `animate render --crop/--paste-back` end to end on real uncropped footage."""

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest

from engine.media.video_io import load_image, probe_video, read_frames
from engine.subject.autocrop import image_crop
from engine.subject.box import Box
from engine.subject.face import FaceDetector
from tests.conftest import MEDIA, ROOT, need_shared

ANIMATE = [sys.executable, "-m", "cli.main"]
REFERENCE = FaceDetector("haarcascade_frontalface_alt.xml", min_neighbors=6)


def run_animate(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*ANIMATE, *map(str, args)], capture_output=True, text=True, timeout=300)


def cut(name: str, out: Path, seconds: float) -> Path:
    """The first seconds of a shared clip, re-encoded so the cut is frame exact."""
    clip = need_shared(MEDIA / "clips" / f"{name}.mp4")
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(clip), "-t", str(seconds), str(out)], check=True)
    return out


def first_frame(path: Path) -> np.ndarray:
    info = probe_video(path)
    return next(iter(read_frames(path, info.height, info.width)))


def assert_one_line_error(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("animate: error: ") and text in lines[0], result.stderr


@pytest.fixture(scope="module")
def s29_short(tmp_path_factory) -> Path:
    return cut("s29", tmp_path_factory.mktemp("clips") / "s29.mp4", 1.5)


@pytest.fixture(scope="module")
def s32_short(tmp_path_factory) -> Path:
    return cut("s32", tmp_path_factory.mktemp("clips") / "s32.mp4", 1.0)


def test_crop_writes_a_square_video_that_follows_the_face_and_one_box_per_frame(s29_short, tmp_path):
    out, boxes_path = tmp_path / "cropped.mp4", tmp_path / "boxes.json"
    result = run_animate("crop", "--in", s29_short, "--out", out, "--boxes", boxes_path, "--size", "128")
    assert result.returncode == 0, result.stderr
    source, cropped = probe_video(s29_short), probe_video(out)
    assert (cropped.width, cropped.height) == (128, 128)
    assert cropped.frames == source.frames and cropped.has_audio
    boxes = json.loads(boxes_path.read_text())
    assert len(boxes) == source.frames
    assert all(len(b) == 4 and all(isinstance(v, int) for v in b) and b[2] == b[3] > 0 for b in boxes)
    face = REFERENCE.best(cv2.cvtColor(first_frame(out), cv2.COLOR_RGB2GRAY), min_side=30)
    assert face is not None, "the cropped video should show the face"
    assert abs(face.cx - 64) < 0.08 * 128 and 0.42 <= face.w / 128 <= 0.72
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boxes.json", "cropped.mp4"]


def test_crop_rejects_bad_inputs_without_leaving_files(s29_short, tmp_path):
    out = tmp_path / "out.mp4"
    assert_one_line_error(run_animate("crop", "--in", tmp_path / "missing.mp4", "--out", out), "not found")
    assert_one_line_error(run_animate("crop", "--in", s29_short, "--out", out, "--size", "15"), "--size")
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"not a video at all")
    assert_one_line_error(run_animate("crop", "--in", bogus, "--out", out), "bogus.mp4")
    assert_one_line_error(
        run_animate("crop", "--in", s29_short, "--out", out, "--boxes", tmp_path / "no" / "b.json"),
        "output folder does not exist",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bogus.mp4"]


def test_render_crop_auto_on_an_uncropped_clip(small_checkpoint, s32_short, tmp_path):
    source = need_shared(MEDIA / "images" / "s3.jpg")  # a portrait, face in the upper third
    out = tmp_path / "out.mp4"
    result = run_animate(
        "render", "--source", source, "--driving", s32_short, "--checkpoint", small_checkpoint,
        "--out", out, "--crop", "auto", "--batch-size", "8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    info = probe_video(out)
    assert (info.width, info.height) == (64, 64)
    assert info.frames == probe_video(s32_short).frames
    (summary,) = result.stderr.strip().splitlines()  # no warning: the photo has a face
    assert "framing face: a face found in the photo: a square around the face" in summary


def test_render_says_prominently_when_the_photo_has_no_face(small_checkpoint, s32_short, tmp_path):
    """The bottom third of a portrait (clothes, no face): auto animates what it is given, background
    and all, and says so on a line of its own before the summary."""
    portrait = load_image(need_shared(MEDIA / "images" / "s3.jpg"))
    source = tmp_path / "no-face.png"
    cv2.imwrite(str(source), cv2.cvtColor(portrait[-243:], cv2.COLOR_RGB2BGR))  # 564x243
    result = run_animate(
        "render", "--source", source, "--driving", s32_short, "--checkpoint", small_checkpoint,
        "--out", tmp_path / "out.mp4", "--batch-size", "8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    warning, summary = result.stderr.strip().splitlines()
    assert (
        warning.startswith(
            "animate: warning: no face found in the photo: the picture's centre square is animated, "
            "background included"
        )
        and "--crop X,Y,W,H" in warning
    )
    assert "framing centre: no face found in the photo" in summary


def test_render_paste_back_keeps_the_source_size_and_background(s32_short, tmp_path):
    source = tmp_path / "portrait.jpg"  # 564x729: odd height, trimmed to even for H.264
    shutil.copy(need_shared(MEDIA / "images" / "s3.jpg"), source)
    out = tmp_path / "out.mp4"
    starter = ROOT / "weights" / "starter.pth.tar"  # trained: random weights barely move the face
    result = run_animate(
        "render", "--source", source, "--driving", s32_short, "--checkpoint", starter,
        "--out", out, "--crop", "auto", "--paste-back", "--batch-size", "8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    image = load_image(source)[:728]
    info = probe_video(out)
    assert (info.width, info.height) == (564, 728)
    _, box = image_crop(image)
    frames = list(itertools.islice(read_frames(out, 728, 564), 0, 30, 10))
    far = np.ones(image.shape[:2], bool)
    grown = box.grown(1.2).clipped(564, 728)
    far[int(grown.y) : int(grown.bottom) + 1, int(grown.x) : int(grown.right) + 1] = False
    assert far.mean() > 0.3
    inside = Box(box.x, box.y, box.w, box.h).grown(0.5)
    core = (slice(int(inside.y), int(inside.bottom)), slice(int(inside.x), int(inside.right)))
    changes = []
    for frame in frames:
        difference = np.abs(frame.astype(int) - image.astype(int))
        assert difference[far].mean() < 3, "far from the subject the photo is unchanged (but for H.264)"
        changes.append(difference[core].mean())
    assert changes[0] < 3, "the first frame (relative mode: no motion yet) is the photo, sharp"
    assert max(changes[1:]) > 3, "then the subject moves"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--crop", "sideways"], "crop: must be one of"),
        (["--crop", "0,0,5000,5000"], "not inside"),
        (["--crop", "none", "--paste-back"], "paste_back needs a crop"),
        (["--paste-back", "--size", "128"], "size cannot be combined"),
    ],
)
def test_render_rejects_bad_framing_options(args, message, small_checkpoint, s32_short, tmp_path):
    source = need_shared(MEDIA / "images" / "s3.jpg")
    out = tmp_path / "out.mp4"
    result = run_animate(
        "render", "--source", source, "--driving", s32_short, "--checkpoint", small_checkpoint,
        "--out", out, *args,
    )  # fmt: skip
    assert_one_line_error(result, message)
    assert list(tmp_path.iterdir()) == []


def test_a_phone_clip_stored_sideways_is_cropped_upright(s32_short, tmp_path):
    """Phones store portrait video sideways with a rotation tag; ffmpeg turns it upright on decoding."""
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    sideways, phone = tmp_path / "sideways.mp4", tmp_path / "phone.mp4"
    subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(s32_short), "-vf", "transpose=2", str(sideways)], check=True
    )
    tag = [ffmpeg, "-v", "error", "-display_rotation", "-90", "-i", str(sideways), "-c", "copy", str(phone)]
    subprocess.run(tag, check=True)
    info = probe_video(phone)
    assert (info.width, info.height) == (1280, 720), "the size as shown, not as stored"
    out = tmp_path / "cropped.mp4"
    result = run_animate("crop", "--in", phone, "--out", out, "--size", "128")
    assert result.returncode == 0, result.stderr
    assert "face framing" in result.stderr
    face = REFERENCE.best(cv2.cvtColor(first_frame(out), cv2.COLOR_RGB2GRAY), min_side=30)
    assert face is not None and abs(face.cx - 64) < 0.08 * 128
