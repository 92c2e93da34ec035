"""TPSMM files through the Renderer and `animate render`: modes, background motion, bf16."""

import pytest
import torch
from pydantic import ValidationError

from engine import load_checkpoint, save_checkpoint
from engine.animator import Animator
from engine.errors import RenderError
from engine.pipeline import RenderOptions
from tests.conftest import TPSMM, need_shared


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


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a.float() - b.float()) ** 2).mean()))


@pytest.mark.parametrize("mode, background_motion", [("relative", False), ("avd", False), ("absolute", True)])
def test_bf16_stays_above_35_db_against_fp32(tpsmm_64, real_frames, mode, background_motion):
    source, driving = real_frames
    renderer = Animator(load_checkpoint(tpsmm_64["tpsmm-small"]))
    frames = {}
    for precision in ("fp32", "bf16"):
        state = renderer.prepare_source(source, precision, mode=mode, background_motion=background_motion)
        frames[precision] = renderer.animate_batch(state, driving)
    assert psnr(frames["bf16"], frames["fp32"]) >= 35


def test_modes_a_model_cannot_render_are_invalid_options(tpsmm_64, small_checkpoint):
    source = torch.rand(1, 3, 64, 64)
    without_background = Animator(load_checkpoint(tpsmm_64["tpsmm-small-nobg"]))
    with pytest.raises(RenderError, match="no background motion predictor") as error:
        without_background.prepare_source(source, background_motion=True)
    assert error.value.code == "invalid_option"
    fomm = Animator(load_checkpoint(small_checkpoint))
    with pytest.raises(RenderError, match="mode 'avd' is not available with this fomm model") as error:
        fomm.prepare_source(source, mode="avd")
    assert error.value.code == "invalid_option"
    with pytest.raises(ValidationError, match="'relative', 'absolute' or 'avd'"):
        RenderOptions(mode="standard")
