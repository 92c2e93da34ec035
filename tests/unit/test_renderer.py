"""The fast inference path computes what the plain per-frame loop computes, on real frames."""

import pytest
import torch

from engine import load_checkpoint
from engine.animator import Animator
from engine.families.fomm import normalize_kp
from engine.layers.inference import fold_batch_norm
from tests.conftest import FOMM, need_shared


def plain_loop(model, source, driving):
    """The published demo's way: one frame at a time, the whole generator each time."""
    with torch.no_grad():
        kp_source = model.kp_detector(source)
        kp_initial = model.kp_detector(driving[:1])
        out = []
        for t in range(driving.shape[0]):
            kp = normalize_kp(kp_source, model.kp_detector(driving[t : t + 1]), kp_initial, True, True, True)
            out.append(model.generator(source, kp_source=kp_source, kp_driving=kp)["prediction"])
    return torch.cat(out)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a.float() - b.float()) ** 2).mean()))


@pytest.fixture(scope="module")
def checkpoint():
    return need_shared(FOMM / "fomm-small.pth.tar")


def test_folding_batch_norm_keeps_the_function(checkpoint):
    model = load_checkpoint(checkpoint)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = model.kp_detector(x)["value"]
        assert fold_batch_norm(model) > 10
        after = model.kp_detector(x)["value"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.kp_detector.modules())
    assert torch.allclose(before, after, atol=1e-5)


def test_fp32_batches_equal_the_plain_loop(checkpoint, real_frames):
    source, driving = real_frames
    expected = plain_loop(load_checkpoint(checkpoint), source, driving)
    renderer = Animator(load_checkpoint(checkpoint))
    state = renderer.prepare_source(source, precision="fp32")
    got = torch.cat([renderer.animate_batch(state, driving[:3]), renderer.animate_batch(state, driving[3:])])
    assert float((got - expected).abs().max()) < 1e-4


def test_bf16_stays_above_35_db_against_fp32(checkpoint, real_frames):
    source, driving = real_frames
    renderer = Animator(load_checkpoint(checkpoint))
    fp32 = renderer.animate_batch(renderer.prepare_source(source, precision="fp32"), driving)
    bf16 = renderer.animate_batch(renderer.prepare_source(source, precision="bf16"), driving)
    assert bf16.dtype in (torch.float32, torch.bfloat16)
    assert psnr(bf16, fp32) >= 35
