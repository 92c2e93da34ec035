"""LivePortrait as a served family: the published folder recognised (with or without its
`liveportrait/` parent), frames taken at the output size, sessions batched like single jobs, the
still at rest, options of other families refused naming the field, and eye/lip retargeting refused
without the published landmark.onnx (and rendered through the adapter when ratios are known)."""

import shutil

import pytest
import torch

from contract.capabilities import UnsupportedChoice, check_options
from contract.options import AnimationOptions
from engine import load_checkpoint
from engine.animator import Animator
from engine.checkpoints import Checkpoint
from engine.errors import RenderError
from engine.families import family_for
from tests.families import liveportrait_at_64


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return liveportrait_at_64(tmp_path_factory.mktemp("lp"))


@pytest.fixture(scope="module")
def animator(folder) -> Animator:
    return Animator(load_checkpoint(folder), name="lp")


def test_the_published_layout_is_recognised_under_its_parent_folder(folder, tmp_path):
    shutil.copytree(folder, tmp_path / "download" / "liveportrait")
    assert family_for(Checkpoint(tmp_path / "download")).name == "liveportrait"
    model = load_checkpoint(tmp_path / "download")
    assert model.input_shape == (64, 64) and model.frame_shape == (128, 128)
    assert model.landmark_path is None


def test_frames_at_the_output_size_are_resized_to_the_networks_input(animator):
    """The pipeline crops at frame_shape (the published 512) and the networks take input_shape (256)."""
    assert animator.capabilities.frame_size == (128, 128)
    source, driving = torch.rand(1, 3, 128, 128), torch.rand(3, 3, 128, 128)
    state = animator.prepare_source(source)
    out = animator.animate_batch(state, driving)
    assert out.shape == (3, 3, 128, 128)
    small = torch.nn.functional.interpolate(driving, size=(64, 64), mode="area")
    state = animator.prepare_source(torch.nn.functional.interpolate(source, size=(64, 64), mode="area"))
    assert torch.allclose(animator.animate_batch(state, small), out, atol=1e-5)


def test_sessions_batched_together_render_as_each_alone(animator):
    sources, frames = torch.rand(2, 1, 3, 64, 64), torch.rand(2, 3, 64, 64)
    states = [animator.prepare_source(s, multiplier=1.5) for s in sources]
    together = animator.animate_sessions(states, frames)
    alone = [
        animator.animate_batch(animator.prepare_source(s, multiplier=1.5), f[None])
        for s, f in zip(sources, frames, strict=True)
    ]
    assert torch.allclose(together, torch.cat(alone), atol=1e-5)


def test_the_still_is_a_frame_with_the_source_pose(animator):
    """Driven by the source itself (relative motion, stitching on), a frame equals the still."""
    source = torch.rand(1, 3, 64, 64)
    state = animator.prepare_source(source)
    frame = animator.animate_batch(state, source)
    still = animator.still(state).image
    assert still.shape == (128, 128, 3)
    assert abs(frame[0].permute(1, 2, 0).numpy() * 255 - still).max() <= 1


@pytest.mark.parametrize(
    "options, field",
    [
        ({"adapt_scale": False}, "adapt_scale"),
        ({"background_motion": True}, "background_motion"),
        ({"mode": "avd"}, "mode"),
    ],
)
def test_other_families_options_are_refused_naming_the_field(animator, options, field):
    with pytest.raises(UnsupportedChoice) as refused:
        check_options("lp", animator.capabilities, AnimationOptions(**options))
    assert refused.value.field == field


def test_its_options_are_refused_by_other_families(small_checkpoint):
    fomm = Animator(load_checkpoint(small_checkpoint), name="small").capabilities
    for options in ({"region": "lips"}, {"stitching": False}, {"multiplier": 2.0}, {"eye_retargeting": True}):
        with pytest.raises(UnsupportedChoice, match="a fomm model") as refused:
            check_options("small", fomm, AnimationOptions(**options))
        assert refused.value.field == next(iter(options)) and refused.value.code == "unsupported_option"


@pytest.mark.parametrize("field", ["eye_retargeting", "lip_retargeting", "normalize_lips"])
def test_retargeting_without_landmark_onnx_is_refused_saying_why(animator, field):
    assert field not in animator.capabilities.options
    with pytest.raises(
        RenderError, match=f"^{field}: model 'lp' needs the published landmark.onnx"
    ) as refused:
        animator.prepare_source(torch.rand(1, 3, 64, 64), **{field: True})
    assert refused.value.code == "invalid_option"


class FixedRatios:
    """Stands in for landmark.onnx: eyes and lips open by a known amount per frame."""

    def ratios(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        n = frames.shape[0]
        return {"eye_ratio": torch.full((n, 2), 0.3), "lip_ratio": torch.linspace(0.0, 0.5, n)[:, None]}


def test_retargeting_renders_with_the_ratios_the_landmarks_give(folder):
    from engine.families.liveportrait.family import LivePortrait

    model = LivePortrait().load(Checkpoint(folder), None)
    adapter = LivePortrait().adapter(model, "cpu")
    adapter.landmarks = FixedRatios()
    options = AnimationOptions(eye_retargeting=True, lip_retargeting=True)
    state = adapter.prepare_source(torch.rand(1, 3, 64, 64), "fp32", options)
    frames = torch.rand(3, 3, 64, 64)
    kp = adapter.keypoints(frames)
    state.kp_initial = {k: v[:1] for k, v in kp.items()}
    out = adapter.animate(state, frames, kp)["prediction"]
    assert out.shape == (3, 3, 128, 128)
    assert not torch.allclose(out[0], out[2]), "the lips' ratio moves the frames"
