"""TPSMM files through the Renderer and `animate render`: modes, background motion, bf16."""

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine import load_checkpoint, save_checkpoint
from engine.animator import Animator
from engine.frames import to_frames, to_tensor
from engine.media.video_io import load_image, probe_video, read_frames, resize_image
from engine.pipeline import RenderOptions, VideoPipeline
from tests.conftest import MEDIA, ROOT, TPSMM, need_shared


@pytest.fixture(scope="module")
def real_frames(clip, portrait):
    frames = list(itertools.islice(read_frames(clip, 64, 64), 0, 40, 5))
    source = resize_image(load_image(portrait), 64, 64)
    return to_tensor(source[None], "cpu"), to_tensor(np.stack(frames), "cpu")


@pytest.fixture(scope="module")
def tpsmm_64(tmp_path_factory):
    """The small TPSMM fixtures re-saved with their 64x64 frame size."""
    folder = tmp_path_factory.mktemp("tpsmm")
    paths = {}
    for name in ("tpsmm-small", "tpsmm-small-nobg"):
        model = load_checkpoint(need_shared(TPSMM / f"{name}.pth.tar"))
        model.frame_shape = (64, 64)
        paths[name] = folder / f"{name}.pth.tar"
        save_checkpoint(paths[name], model)
    return paths


def run_animate(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cli.main", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.slow
def test_animate_render_with_avd_and_background_motion(tpsmm_64, small_checkpoint, portrait, clip, tmp_path):
    from tests.service_stack import cut_clip

    driving = cut_clip(clip, tmp_path / "d3-1s.mp4", "-t", "1")
    common = ["--source", portrait, "--driving", driving, "--crop", "none", "--batch-size", "8"]
    out = tmp_path / "avd.mp4"
    result = run_animate(
        "render", *common, "--checkpoint", tpsmm_64["tpsmm-small"], "--out", out, "--mode", "avd"
    )
    assert result.returncode == 0, result.stderr
    rendered = probe_video(out)
    assert (rendered.frames, rendered.width, rendered.height) == (probe_video(driving).frames, 64, 64)
    out = tmp_path / "bg.mp4"
    result = run_animate(
        "render", *common, "--checkpoint", tpsmm_64["tpsmm-small"], "--out", out, "--mode", "absolute",
        "--background-motion",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert probe_video(out).frames == rendered.frames

    refused = [
        (tpsmm_64["tpsmm-small-nobg"], "--background-motion", "no background motion predictor"),
        (small_checkpoint, "--mode=avd", "mode 'avd' is not available with this fomm model"),
    ]
    for checkpoint, flag, message in refused:
        out = tmp_path / "refused.mp4"
        result = run_animate("render", *common, "--checkpoint", checkpoint, "--out", out, flag)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_the_worker_describes_each_model_with_its_family_and_modes(tpsmm_64, small_checkpoint):
    from worker.catalog import load_models

    loaded = load_models({"tps": tpsmm_64["tpsmm-small-nobg"], "small": small_checkpoint}, "cpu")
    described = loaded["tps"].describe().model_dump(mode="json")
    assert {
        key: described[key]
        for key in ("name", "family", "frame_size", "num_kp", "modes", "background_motion")
    } == {
        "name": "tps",
        "family": "tpsmm",
        "frame_size": [64, 64],
        "num_kp": 10,
        "modes": ["relative", "absolute", "avd"],
        "background_motion": False,
    }
    fomm = loaded["small"].describe().model_dump(mode="json")
    assert (fomm["family"], fomm["modes"], fomm["background_motion"]) == (
        "fomm",
        ["relative", "absolute"],
        False,
    )


def test_paste_back_gets_tpsmms_motion_and_a_still_that_does_not_move(
    tpsmm_64, real_frames, portrait, tmp_path
):
    from engine.media.output import FORMATS, output_size
    from tests.integration.test_output import decode
    from tests.service_stack import cut_clip

    source, driving = real_frames
    renderer = Animator(load_checkpoint(tpsmm_64["tpsmm-small"]))
    state = renderer.prepare_source(source, background_motion=True)
    still = renderer.still(state)
    h, w = still.deformation.shape[:2]
    identity = np.dstack(np.meshgrid(np.linspace(-1, 1, w), np.linspace(-1, 1, h)))
    assert np.abs(still.deformation - identity).max() < 0.1, "driven by its own keypoints, it barely moves"
    assert still.occlusion.shape == (64, 64) and 0 <= still.occlusion.min() <= still.occlusion.max() <= 1
    itself = renderer.animate_with_motion(renderer.prepare_source(source, mode="absolute"), source)
    assert np.allclose(itself["deformation"][0].numpy(), still.deformation, atol=1e-5)
    assert np.array_equal(to_frames(itself["prediction"].clone())[0], still.image), (
        "the still is the source driving itself"
    )
    moving = renderer.animate_with_motion(state, driving)
    assert moving["deformation"].shape == (len(driving), h, w, 2)
    assert moving["occlusion_map"].shape == (len(driving), 1, 64, 64)
    assert (moving["deformation"] - torch.from_numpy(still.deformation)).abs().amax() > 1e-2

    clip = cut_clip(need_shared(MEDIA / "clips" / "d3.mp4"), tmp_path / "d3.mp4", "-t", "0.3")
    photo = load_image(portrait)
    out = tmp_path / "pasted.mp4"
    result = VideoPipeline(renderer).render(
        photo, clip, out, RenderOptions(crop="face", paste_back=True, audio=False)
    )
    assert (result.width, result.height) == output_size(photo.shape[1], photo.shape[0], None, FORMATS["mp4"])
    assert len(decode(out, result.width, result.height)) == result.frames == probe_video(clip).frames
