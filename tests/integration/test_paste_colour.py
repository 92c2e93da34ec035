"""Paste-back of real renders adds no colour the photo lacks: a black-and-white photo animated by the
bundled starter model (trained on colour clips, it tints what it renders) stays black and white."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import load_checkpoint
from engine.animator import Animator
from engine.frames import model_frames, to_tensor
from engine.media.video_io import probe_video
from engine.subject.framing import plan_framing
from tests.conftest import MEDIA, ROOT, need_shared
from tests.service_stack import cut_clip

TOLERANCE = 2  # levels of 255 between a pixel's channels


@pytest.fixture(scope="module")
def animator() -> Animator:
    return Animator(load_checkpoint(ROOT / "weights" / "starter.pth.tar"))


@pytest.fixture(scope="module")
def talking(tmp_path_factory, clip) -> Path:
    """The first 2 s of d3, a talking head."""
    return cut_clip(clip, tmp_path_factory.mktemp("clips") / "d3-2s.mp4", "-t", "2", "-an")


def photo_in(tone: tuple[float, float, float]) -> np.ndarray:
    """s0.jpg (704x600) made black and white, each channel then scaled by `tone`: (H, W, 3) uint8."""
    gray = np.asarray(Image.open(need_shared(MEDIA / "images" / "s0.jpg")).convert("L"), np.float32)
    return np.rint(gray[..., None] * np.array(tone, np.float32)).astype(np.uint8)


@torch.inference_mode()
def pasted(animator: Animator, photo: np.ndarray, driving: Path) -> np.ndarray:
    """Every frame of a paste-back render, as the pipeline hands them to the encoder: (N, H, W, 3)."""
    h, w = animator.model.frame_shape
    framing = plan_framing(photo, driving, probe_video(driving), "auto", paste_back=True)
    state = animator.prepare_source(to_tensor(framing.source_input(h, w)[None], "cpu"))
    framing.prepare_paste(animator.still(state))
    frames = np.stack(list(framing.driving_frames(h, w)))
    out = [
        framing.finish(model_frames(animator.animate_with_motion(state, to_tensor(frames[i : i + 8], "cpu"))))
        for i in range(0, len(frames), 8)
    ]
    return np.concatenate(out)


def test_a_black_and_white_photo_stays_black_and_white(animator, talking):
    photo = photo_in((1.0, 1.0, 1.0))
    frames = pasted(animator, photo, talking).astype(int)
    assert (np.abs(frames - photo).max(axis=3) > 16).sum() > 1000, "the face moves"
    coloured = (frames.max(axis=3) - frames.min(axis=3) > TOLERANCE).sum(axis=(1, 2))
    assert coloured.max() == 0, f"{coloured.max()} coloured pixels in frame {coloured.argmax()}"


def test_a_toned_photo_gets_no_other_colour(animator, talking):
    """A sepia-like photo: every pixel's chroma on one line; the video's must stay on it."""
    tone = (1.0, 0.8, 0.6)
    frames = pasted(animator, photo_in(tone), talking).astype(np.float32)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    chroma = np.stack([frames[..., 2], frames[..., 0]], axis=-1) - (frames @ luma)[..., None]  # B - Y, R - Y
    line = np.array([tone[2], tone[0]], np.float32) - float(luma @ tone)
    off_line = np.abs(chroma @ np.array([-line[1], line[0]]) / np.linalg.norm(line))
    assert (off_line > 3).sum() == 0, f"{(off_line > 3).sum()} pixels off the photo's tone"
