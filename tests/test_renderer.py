"""The fast inference path computes what the plain per-frame loop computes, on real frames."""

import numpy as np
import pytest
import torch

from engine import load_checkpoint
from engine.animator import Animator
from engine.families.fomm import normalize_kp
from engine.frames import to_tensor
from engine.layers.inference import fold_batch_norm
from engine.media.video_io import load_image, read_frames, resize_image
from tests.conftest import FOMM, need_shared


@pytest.fixture(scope="module")
def real_frames(clip, portrait):
    frames = []
    for i, frame in enumerate(read_frames(clip, 64, 64)):
        if i % 5 == 0:
            frames.append(frame)
        if len(frames) == 8:
            break
    source = load_image(portrait)
    return to_tensor(resize_image(source, 64, 64)[None], "cpu"), to_tensor(np.stack(frames), "cpu")


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


MEASURE_PEAK = """
import resource, sys
from engine import load_checkpoint
from engine.animator import Animator
from engine.pipeline import RenderOptions, VideoPipeline
from engine.media.video_io import load_image
renderer = Animator(load_checkpoint(sys.argv[1]))
VideoPipeline(renderer).render(load_image(sys.argv[2]), sys.argv[3], sys.argv[4], RenderOptions(batch_size=8))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_peak_memory_does_not_grow_with_the_video_length(small_checkpoint, portrait, tmp_path):
    import subprocess
    import sys

    import imageio_ffmpeg

    peaks = {}
    for seconds in (5, 60):
        clip = tmp_path / f"{seconds}s.mp4"
        subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
             f"testsrc=size=320x240:rate=25:duration={seconds}", "-pix_fmt", "yuv420p", str(clip)],
            check=True,
        )  # fmt: skip
        rendered = tmp_path / f"out-{seconds}.mp4"
        out = subprocess.run(
            [sys.executable, "-c", MEASURE_PEAK, small_checkpoint, portrait, clip, rendered],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        peaks[seconds] = int(out.stdout.split()[-1])
    assert peaks[60] <= peaks[5] * 1.10, peaks


def test_progress_runs_through_the_stages_once_and_never_backwards(
    small_checkpoint, portrait, clip, tmp_path
):
    from engine.media.video_io import probe_video
    from engine.pipeline import RenderOptions, VideoPipeline
    from engine.progress import Progress
    from tests.service_stack import cut_clip

    driving = cut_clip(clip, tmp_path / "d3-1s.mp4", "-t", "1")
    frames = probe_video(driving).frames
    calls: list[Progress] = []
    renderer = Animator(load_checkpoint(small_checkpoint))
    options = RenderOptions(crop="auto", batch_size=8, format="gif", loop=True)
    result = VideoPipeline(renderer).render(
        load_image(portrait), driving, tmp_path / "out.gif", options, calls.append
    )
    stages = [p.stage for p in calls]
    order = [stage for i, stage in enumerate(stages) if i == 0 or stages[i - 1] != stage]
    assert order == ["analysing", "rendering", "encoding"], "each stage once, in order"
    analysing = [p.frames_done for p in calls if p.stage == "analysing"]
    assert analysing == list(range(1, frames + 1)), "the crop's pass reports every frame"
    rendered = [p for p in calls if p.stage == "rendering"]
    assert rendered[0].frames_done == 0 and rendered[-1].frames_done == rendered[-1].frames_total == -(
        -frames // 2
    )
    percents = [p.overall_percent for p in calls]
    assert all(b >= a for a, b in zip(percents, percents[1:], strict=False)) and percents[-1] == 100
    assert all(p.fps is None or 0 < p.fps < 100_000 for p in calls), "no absurd rate"
    assert calls[-1].frames_done == calls[-1].frames_total and result.frames == 2 * (-(-frames // 2)) - 2


def test_best_start_detects_each_driving_frame_once_and_renders_as_its_explicit_start(
    small_checkpoint, portrait, clip, tmp_path
):
    from engine.media.video_io import probe_video
    from engine.pipeline import RenderOptions, VideoPipeline
    from tests.service_stack import cut_clip

    driving = cut_clip(clip, tmp_path / "d3-1s.mp4", "-t", "1")
    frames = probe_video(driving).frames
    renderer = Animator(load_checkpoint(small_checkpoint))
    detected: list[int] = []
    renderer.model.kp_detector.register_forward_hook(lambda _m, args, _out: detected.append(len(args[0])))
    source = load_image(portrait)
    best = VideoPipeline(renderer).render(
        source, driving, tmp_path / "best.mp4", RenderOptions(driving_start="best", batch_size=8, audio=False)
    )
    assert sum(detected) == frames + 1  # the source, and every driving frame once
    assert 0 < best.driving_start < frames
    explicit = RenderOptions(driving_start=best.driving_start, batch_size=8, audio=False)
    VideoPipeline(renderer).render(source, driving, tmp_path / "explicit.mp4", explicit)
    size = (best.height, best.width)
    rendered = [list(read_frames(tmp_path / name, *size)) for name in ("best.mp4", "explicit.mp4")]
    assert len(rendered[0]) == len(rendered[1]) == frames
    assert all(np.array_equal(a, b) for a, b in zip(*rendered, strict=True))
