"""The video pipeline: one source image and one driving video in, one video out (engine/media/output.py).

Decoding (an ffmpeg process fed by a reader thread), the model (this thread) and paste-back with
encoding (an ffmpeg process fed by a writer thread) overlap, with small bounded queues between them
(engine/streaming.py) so memory does not grow with the video's length. Progress: engine/progress.py.
"""

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from contract.capabilities import Precision
from contract.options import AnimationOptions
from contract.render import JobResult
from engine.animator import Animator
from engine.errors import RenderCanceled, RenderError
from engine.families.adapter import Motion, SourceState, frame_range, joined_keypoints, motion_frames
from engine.frames import model_frames, to_frames, to_tensor
from engine.media.output import FORMATS, OutputFormat, RenderOutput, encoding_units, frame_step, output_size
from engine.media.video_io import VideoInfo, probe_video
from engine.progress import ProgressCallback, ProgressModel, StageCosts
from engine.streaming import BackgroundWriter, StageTimer, batched, prefetch
from engine.subject.framing import Framing, plan_framing


class RenderOptions(AnimationOptions):
    """A request's options (contract/options.py) plus how this engine runs them; checked when built."""

    size: int | None = Field(None, ge=16, le=2048, multiple_of=2)  # output side; None: the model's
    batch_size: int = Field(4, ge=1, le=256)
    device: str = "cpu"
    precision: Precision = "fp32"

    @model_validator(mode="after")
    def _size_and_paste_back(self) -> "RenderOptions":
        if self.paste_back and self.size is not None:
            raise ValueError("size cannot be combined with paste_back: the video has the source image's size")
        return self


class RenderResult(JobResult):
    """The job's result summary (contract/render.py) plus the seconds each stage of the render took."""

    timings: dict[str, float] = Field(default_factory=dict)


def best_start_frame(source_pose: torch.Tensor, driving_poses: torch.Tensor) -> int:
    """Index of the driving pose (T, D) nearest the source's (1, D)."""
    return int(((driving_poses - source_pose) ** 2).sum(dim=1).argmin())


@dataclass
class _Run:
    """One render's plan and what it measures as it goes."""

    options: RenderOptions
    driving_path: Path
    info: VideoInfo
    fmt: OutputFormat
    step: int  # driving frames per output frame
    expected: int  # output frames
    start: int | Literal["best"]  # the driving frame motion is measured from
    crop_frames: int  # frames the crop analysis reads
    keypoint_frames: int  # frames read for the start frame before rendering
    progress: ProgressModel | None = None
    timers: dict[str, StageTimer] = field(
        default_factory=lambda: {name: StageTimer() for name in ("decode", "inference", "encode", "crop")}
    )
    started: float = field(default_factory=time.perf_counter)

    def analysing(self, done: int) -> None:
        total = self.crop_frames + self.keypoint_frames
        self.progress.update("analysing", done, max(total, done))


class VideoPipeline:
    """Renders whole videos with one Animator. One per model in a worker process: `costs` (seconds
    per frame of each stage, for progress estimates) are learnt job by job."""

    def __init__(self, animator: Animator):
        self.animator = animator
        self.costs = StageCosts()

    @torch.inference_mode()
    def render(
        self,
        source_image: np.ndarray,
        driving_path: str | Path,
        out_path: str | Path,
        options: RenderOptions | None = None,
        on_progress: ProgressCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
        info: VideoInfo | None = None,
        poster_path: str | Path | None = None,
    ) -> RenderResult:
        """Animate `source_image` ((H, W, 3) uint8) by the video at `driving_path` into `out_path`.

        The video (and with `options.poster` the JPEG at `poster_path`, by default poster.jpg next
        to the video) appear only when complete; on any failure nothing is left there.
        """
        run = self._plan(Path(driving_path), options or RenderOptions(), info, on_progress)
        framing = self._frame_subject(run, source_image, should_cancel)
        state = self._prepare_source(run, framing)
        known = self._measure_from_start(run, framing, state)
        output = self._open_output(run, framing, Path(out_path), poster_path)
        summary = self._animate(run, framing, state, known, output, should_cancel)
        return self._result(run, summary, framing)

    def _plan(
        self,
        driving_path: Path,
        options: RenderOptions,
        info: VideoInfo | None,
        on_progress: ProgressCallback | None,
    ) -> _Run:
        """What the render will do, checked before any frame is decoded."""
        self.animator.check_options(options)
        info = info or probe_video(driving_path)
        fmt = FORMATS[options.format]
        step = frame_step(info.fps, fmt)
        expected = math.ceil(info.frames / step)
        if options.poster and options.poster_frame >= expected:
            message = f"poster_frame {options.poster_frame} is past the last frame ({expected - 1})"
            raise RenderError(message, "invalid_option")
        start = options.driving_start if options.mode == "relative" else 0
        keypoint_frames = info.frames if start == "best" else min(start + 1, info.frames) if start else 0
        crop_frames = 0 if options.crop == "none" else info.frames
        run = _Run(options, driving_path, info, fmt, step, expected, start, crop_frames, keypoint_frames)
        stages = [
            ("analysing", crop_frames + keypoint_frames),
            ("rendering", expected),
            ("encoding", encoding_units(expected, fmt, options.loop)),
        ]
        run.progress = ProgressModel(stages, on_progress, self.costs)
        return run

    def _frame_subject(
        self, run: _Run, source_image: np.ndarray, should_cancel: Callable[[], bool] | None
    ) -> Framing:
        """The crops of the source and of every driving frame (one analysis pass unless crop none)."""
        with run.timers["crop"].timed():
            return plan_framing(
                source_image,
                run.driving_path,
                run.info,
                run.options.crop,
                run.options.paste_back,
                should_cancel,
                lambda done, _expected: run.analysing(done),
            )

    def _prepare_source(self, run: _Run, framing: Framing) -> SourceState:
        """The source's state, and the still that paste-back compares every frame with."""
        h, w = self.animator.model.frame_shape
        source = to_tensor(framing.source_input(h, w)[None], self.animator.device)
        with run.timers["inference"].timed():
            state = self.animator.prepare_source(source, run.options.precision, run.options)
            if framing.pastes:
                framing.prepare_paste(self.animator.still(state))
        return state

    def _measure_from_start(self, run: _Run, framing: Framing, state: SourceState) -> Motion:
        """Set the frame motion is measured from (an index, or the best match of the source's pose);
        returns the keypoints read on the way, so they are not computed again."""
        if run.start == 0:
            return {}
        h, w = self.animator.model.frame_shape
        stop_at = None if run.start == "best" else run.start
        with run.timers["decode"].timed():
            frames = framing.driving_frames(h, w)
            known = self._driving_keypoints(frames, run.options.batch_size, stop_at, run)
        if run.start == "best":
            run.start = best_start_frame(self.animator.pose(state.kp_source), self.animator.pose(known))
        elif run.start >= motion_frames(known):
            last = motion_frames(known) - 1
            raise RenderError(f"driving_start {run.start} is past the last frame ({last})", "invalid_option")
        state.kp_initial = frame_range(known, run.start, run.start + 1)
        return known

    def _driving_keypoints(
        self, frames: Iterator[np.ndarray], batch_size: int, stop_at: int | None, run: _Run
    ):
        """The keypoints of the driving frames up to and including stop_at (all when None)."""
        parts = []
        seen = 0
        for batch in batched(frames, batch_size):
            parts.append(self.animator.keypoints(to_tensor(batch, self.animator.device)))
            seen += len(batch)
            run.analysing(run.crop_frames + seen)
            if stop_at is not None and seen > stop_at:
                break
        return joined_keypoints(parts)

    def _open_output(self, run: _Run, framing: Framing, out_path: Path, poster_path: str | Path | None):
        """The output being written: format, size, frame rate, audio, loop and poster as asked."""
        options, info = run.options, run.info
        h, w = self.animator.model.frame_shape
        frame_w, frame_h = framing.output_size(w, h)
        poster = (
            (Path(poster_path) if poster_path else out_path.with_name("poster.jpg"))
            if options.poster
            else None
        )
        return RenderOutput(
            out_path,
            run.fmt,
            (frame_w, frame_h),
            output_size(frame_w, frame_h, options.size, run.fmt),
            info.fps / run.step,
            options.loop,
            run.driving_path if options.audio and info.has_audio else None,
            poster,
            options.poster_frame,
        )

    def _animate(
        self,
        run: _Run,
        framing: Framing,
        state: SourceState,
        known: Motion,
        output: RenderOutput,
        should_cancel: Callable[[], bool] | None,
    ):
        """Every driving frame animated and written; the output's summary once it is complete."""
        writer = BackgroundWriter(lambda batch: output.write(framing.finish(batch)))
        try:
            done = self._render_frames(run, framing, state, known, writer, should_cancel)
            if done == 0:
                raise RenderError(f"{run.driving_path.name} has no decodable frame", "invalid_video")
            with run.timers["encode"].timed():
                writer.finish()
                summary = output.finish(lambda units, of: run.progress.update("encoding", units, of))
        except BaseException:
            writer.abort()
            output.abort()
            raise
        run.progress.finish()
        return summary

    def _render_frames(
        self,
        run: _Run,
        framing: Framing,
        state: SourceState,
        known: Motion,
        writer: BackgroundWriter,
        should_cancel: Callable[[], bool] | None,
    ) -> int:
        """The frame loop: decode a batch, animate it, hand it to the writer. Returns frames done."""
        h, w = self.animator.model.frame_shape
        known_frames = motion_frames(known) if known else 0
        done, total, step = 0, run.expected, run.step
        run.progress.update("rendering", 0, total)
        batches = prefetch(batched(framing.driving_frames(h, w, step), run.options.batch_size))
        while True:
            with run.timers["decode"].timed():
                batch = next(batches, None)
            if batch is None:
                return done
            if should_cancel is not None and should_cancel():
                raise RenderCanceled("the job was canceled")
            with run.timers["inference"].timed():
                end = done + len(batch)
                kp = (
                    frame_range(known, done * step, end * step, step)
                    if (end - 1) * step < known_frames
                    else None
                )
                out = self.animator.animate_with_motion(state, to_tensor(batch, self.animator.device), kp)
                rendered = model_frames(out) if framing.pastes else to_frames(out["prediction"])
            with run.timers["encode"].timed():
                writer.put(rendered)
            done = end
            total = max(total, done)
            run.progress.update("rendering", done, total)

    @staticmethod
    def _result(run: _Run, summary, framing: Framing) -> RenderResult:
        timers = run.timers
        return RenderResult(
            frames=summary.frames,
            fps=summary.fps,
            width=summary.width,
            height=summary.height,
            audio=summary.audio,
            driving_start=run.start,
            precision=run.options.precision,
            format=summary.format,
            mime_type=summary.mime_type,
            bytes=summary.bytes,
            loop=summary.loop,
            poster=summary.poster,
            framing=framing.report,
            timings={
                **{name: round(timer.seconds, 4) for name, timer in timers.items()},
                "total": round(time.perf_counter() - run.started, 4),
            },
        )
