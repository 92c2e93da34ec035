"""Whole videos through the pipeline: memory, progress and the best start frame, for every family."""

import numpy as np
import pytest

from engine import load_checkpoint
from engine.animator import Animator
from engine.media.video_io import load_image, read_frames
from tests.families import CASES

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


@pytest.mark.parametrize("family_case", CASES, ids=str)
def test_best_start_detects_each_driving_frame_once_and_renders_as_its_explicit_start(
    family_case, portrait, clip, tmp_path
):
    """Every family: the pass that picks the start frame reads each driving frame's keypoints once
    and keeps them, and the video equals the one rendered from that start given explicitly."""
    from engine.media.video_io import probe_video
    from engine.pipeline import RenderOptions, VideoPipeline
    from tests.service_stack import cut_clip

    driving = cut_clip(clip, tmp_path / "d3-1s.mp4", "-t", "1")
    frames = probe_video(driving).frames
    renderer = Animator(load_checkpoint(family_case.checkpoint(tmp_path)))
    detected: list[int] = []
    detector = getattr(renderer.model, family_case.keypoint_network)
    detector.register_forward_hook(lambda _m, args, _out: detected.append(len(args[0])))
    source = load_image(portrait)
    best = VideoPipeline(renderer).render(
        source, driving, tmp_path / "best.mp4", RenderOptions(driving_start="best", batch_size=8, audio=False)
    )
    assert sum(detected) == frames + 1  # the source, and every driving frame once
    assert 0 <= best.driving_start < frames
    explicit = RenderOptions(driving_start=best.driving_start, batch_size=8, audio=False)
    VideoPipeline(renderer).render(source, driving, tmp_path / "explicit.mp4", explicit)
    size = (best.height, best.width)
    rendered = [list(read_frames(tmp_path / name, *size)) for name in ("best.mp4", "explicit.mp4")]
    assert len(rendered[0]) == len(rendered[1]) == frames
    assert all(np.array_equal(a, b) for a, b in zip(*rendered, strict=True))
