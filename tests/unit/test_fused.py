"""The fused inference model computes the published function; bf16 keeps the flows; live batches agree."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import load_checkpoint
from engine.animator import Animator
from engine.families.fomm import normalize_kp
from engine.frames import to_frames, to_tensor
from engine.layers.blocks import ResBlock2d, SameBlock2d
from engine.layers.fused import ConvReLU, PreActResidual, UpsampleConvReLU
from tests.conftest import FOMM, TPSMM, need_shared
from worker.live_batcher import LiveBatcher

FIXTURES = ["fomm-small", "fomm-small-zero-order", "fomm-small-single-jacobian"]
TOLERANCE = 1e-4


def _golden(name: str, folder=FOMM):
    golden = np.load(need_shared(folder / f"{name}.npz"))
    source = torch.from_numpy(golden["source"]).permute(2, 0, 1)[None]
    driving = torch.from_numpy(golden["driving"]).permute(0, 3, 1, 2)
    return golden, source, driving


@pytest.mark.parametrize("name", FIXTURES)
def test_fused_model_equals_the_unfused_one_and_the_golden_outputs(name):
    golden, source, driving = _golden(name)
    plain = load_checkpoint(FOMM / f"{name}.pth.tar")
    renderer = Animator(load_checkpoint(FOMM / f"{name}.pth.tar"))
    kinds = {type(m) for m in renderer.model.modules()}
    assert {ConvReLU, UpsampleConvReLU, PreActResidual} <= kinds
    assert not kinds & {SameBlock2d, ResBlock2d}, "every block was replaced"
    n = driving.shape[0]
    with torch.no_grad():
        state = renderer.prepare_source(source)
        state.kp_initial = {k: v[:1] for k, v in renderer.keypoints(driving).items()}
        fused = renderer.animate_batch(state, driving)
        kp_source = plain.kp_detector(source)
        kp_driving = plain.kp_detector(driving)
        kp_norm = normalize_kp(
            kp_source, kp_driving, {k: v[:1] for k, v in kp_driving.items()}, True, True, True
        )
        kp_src = {k: v.expand(n, *v.shape[1:]) for k, v in kp_source.items()}
        unfused = plain.generator(source.expand(n, -1, -1, -1), kp_src, kp_norm)["prediction"]
    assert float((fused - unfused).abs().max()) < TOLERANCE
    assert float((fused - torch.from_numpy(golden["relative_adapt/prediction"])).abs().max()) < TOLERANCE


@pytest.mark.parametrize(("height", "width"), [(5, 7), (16, 16)])
def test_upsampling_folded_into_the_convolution_equals_upsampling_then_convolving(height, width):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 4, 3, padding=1)
    x = torch.randn(2, 6, height, width)
    with torch.no_grad():
        expected = F.relu(conv(F.interpolate(x, scale_factor=2.0, mode="nearest")))
        got = UpsampleConvReLU(conv)(x)
    assert got.shape == expected.shape == (2, 4, 2 * height, 2 * width)
    assert float((got - expected).abs().max()) < 1e-5


SMALL_MODELS = [(FOMM, "fomm-small"), (TPSMM, "tpsmm-small")]


@pytest.mark.parametrize(("folder", "name"), SMALL_MODELS, ids=["fomm", "tpsmm"])
def test_bf16_flows_stay_within_a_hundredth_of_a_pixel_of_fp32(folder, name):
    """Each family's precision policy keeps what makes the flows in float32 or close enough: FOMM's
    dense motion network (with its hourglass in bf16 this model's flows moved by up to 0.5 px),
    TPSMM's splines and contribution heads. Native bf16 on CPUs that have it, emulated elsewhere."""
    _, source, driving = _golden(name, folder)
    renderer = Animator(load_checkpoint(need_shared(folder / f"{name}.pth.tar")))
    flows = {}
    with torch.inference_mode():
        for precision in ("fp32", "bf16"):
            state = renderer.prepare_source(source, precision=precision)
            flows[precision] = renderer.animate_with_motion(state, driving)["deformation"]  # (N, h, w, 2)
    assert flows["bf16"].dtype == torch.float32
    _, h, w, _ = flows["fp32"].shape
    pixels = (flows["bf16"] - flows["fp32"]).abs() * torch.tensor([(w - 1) / 2, (h - 1) / 2])
    assert float(pixels.max()) <= 0.01


@pytest.fixture(scope="module", params=SMALL_MODELS, ids=["fomm", "tpsmm"])
def small_model(request):
    """A small model of each family with its reference source and driving frames."""
    folder, name = request.param
    _, source, driving = _golden(name, folder)
    return Animator(load_checkpoint(need_shared(folder / f"{name}.pth.tar"))), source, driving


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@torch.inference_mode()
def test_live_engine_batches_sessions_as_they_would_render_alone(small_model, precision):
    """Two sessions with different sources, batched by the engine in their precision, get what
    each would get rendered alone in that precision."""
    renderer, source, driving = small_model
    sources = [source, source.flip(3)]
    frames = to_frames(driving[:2])
    alone = []
    for src, frame in zip(sources, frames, strict=True):
        state = renderer.prepare_source(src, precision=precision)
        alone.append(to_frames(renderer.animate_batch(state, to_tensor(frame[None], "cpu")))[0])
    states = [renderer.prepare_source(src, precision=precision) for src in sources]
    together = to_frames(renderer.animate_sessions(states, to_tensor(frames, "cpu")))
    engine = LiveBatcher()
    try:
        states = [renderer.prepare_source(src, precision=precision) for src in sources]
        via_engine = [
            engine.render(renderer, state, frame) for state, frame in zip(states, frames, strict=True)
        ]
    finally:
        engine.stop()
    for one, batched, served in zip(alone, together, via_engine, strict=True):
        assert np.abs(one.astype(int) - batched.astype(int)).max() <= 1
        assert np.array_equal(one, served)
    if precision == "bf16":
        fp32 = renderer.prepare_source(sources[0], precision="fp32")
        in_fp32 = to_frames(renderer.animate_batch(fp32, to_tensor(frames[:1], "cpu")))[0]
        assert not np.array_equal(in_fp32, alone[0]), "bf16 sessions are rendered in bf16"


def test_sessions_with_different_options_are_not_batched_together(small_model):
    renderer, source, driving = small_model
    states = [renderer.prepare_source(source), renderer.prepare_source(source, mode="absolute")]
    with pytest.raises(ValueError, match="must share"):
        renderer.animate_sessions(states, driving[:2])


BF16_NATIVE = pytest.param(torch.bfloat16, marks=pytest.mark.native_bf16)


@pytest.mark.parametrize("dtype", [torch.float32, BF16_NATIVE])
def test_weights_packed_for_onednn_once_give_the_same_output_at_any_batch(dtype):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(32, 48, 3, padding=1).to(dtype)
    fused = ConvReLU(conv, relu=True)
    x = torch.randn(4, 32, 6, 6, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = F.relu(conv(x))
        first = fused(x)
        packed = fused.packed.by_dtype[dtype]
        assert packed.is_mkldnn and fused.weight.layout == torch.strided, "the plain weight stays"
        single = fused(x[:1].contiguous(memory_format=torch.channels_last))
        assert fused.packed.by_dtype[dtype] is packed, "packed once, reused at another batch size"
        copied = copy.deepcopy(fused)
        assert copied.packed.by_dtype == {}, "a copy starts an empty cache"
        again = copied(x)
    assert torch.equal(first, again) and torch.equal(first[:1], single)
    assert float((first.float() - expected.float()).abs().max()) < (1e-4 if dtype == torch.float32 else 5e-2)
