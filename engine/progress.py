"""One progress model for every client of a render: the CLI's bar, the job's meta, the benchmarks.

A render runs up to three stages, in this order, each counting its own frames:

- `analysing`: passes over the driving video before any frame is rendered: the crop following the
  subject (crop other than "none") and, with a driving start other than 0, the keypoints that
  choose or reach it;
- `rendering`: the model, paste-back and the encoder fed frame by frame;
- `encoding`: what is left once the last frame is rendered: the frames played backwards for a
  loop, the GIF's palette and dithering passes, and the encoder's final flush and muxing.

The overall percent weighs each stage by its expected cost: its frames times the seconds a frame
of that stage is expected to take. The estimates start from PRIOR_SECONDS (first-job guesses from
the 2-core development machine: analysis at about 480 px, rendering with paste-back, GIF passes)
and are replaced by what the same process measured in earlier jobs
(`StageCosts`, kept by the renderer), so a worker's bar gets truer job after job. The weights are
fixed when the job starts and the percent is never lowered, so the bar never runs backwards, even
when a stage turns out longer than planned (it then pauses instead).

Rates are exponential moving averages of frames per second over windows of at least
SAMPLE_SECONDS, with time constant SMOOTHING_SECONDS; a stage has no rate (so no fps and no ETA)
until it has run MIN_SECONDS and measured one window. The ETA is the current stage's remaining
frames at that rate (before it has one: at the cost measured in earlier jobs) plus the later stages'
expected seconds. It is None while a stage it depends on has neither: on a process's first job,
until rendering has run MIN_SECONDS (the encoding stage's prior is used as it is: it is the
smallest and least variable share).
"""

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

PRIOR_SECONDS = {"analysing": 0.02, "rendering": 0.1, "encoding": 0.02}  # per frame of each stage
SAMPLE_SECONDS = 0.5
SMOOTHING_SECONDS = 3.0
MIN_SECONDS = 1.0


@dataclass(frozen=True)
class Progress:
    """What a client shows of a running render."""

    stage: str  # one of PROGRESS_STAGES (or a command's own stage name)
    frames_done: int  # in this stage
    frames_total: int  # in this stage
    overall_percent: float  # 0 to 100 over all stages; never decreases within a render
    eta_seconds: float | None  # None until it can be estimated
    fps: float | None  # this stage's smoothed rate; None until measured

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "frames_done": self.frames_done,
            "frames_total": self.frames_total,
            "overall_percent": round(self.overall_percent, 1),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "fps": None if self.fps is None else round(self.fps, 2),
        }


ProgressCallback = Callable[[Progress], None]


@dataclass
class StageCosts:
    """Seconds per frame of each stage: the priors, then what this process measured (a running mean
    weighted towards recent jobs)."""

    seconds: dict[str, float] = field(default_factory=lambda: dict(PRIOR_SECONDS))
    measured: set[str] = field(default_factory=set)

    def estimate(self, stage: str) -> float:
        return self.seconds.get(stage, PRIOR_SECONDS["rendering"])

    def record(self, stage: str, frames: int, seconds: float) -> None:
        if frames <= 0 or seconds <= 0:
            return
        per_frame = seconds / frames
        known = stage in self.measured
        self.seconds[stage] = 0.5 * self.seconds[stage] + 0.5 * per_frame if known else per_frame
        self.measured.add(stage)


@dataclass
class _Stage:
    name: str
    total: int
    weight: float  # expected seconds: frames x seconds per frame
    started: float | None = None
    done: int = 0
    rate: float | None = None  # frames per second, smoothed
    window_start: tuple[float, int] = (0.0, 0)  # (time, frames) where the current window began


class ProgressModel:
    """Turns (stage, frames done, frames total) reports into Progress for `on_progress`.

    `plan`: (stage, expected frames) in the order the stages run; stages with no frames are left out.
    """

    def __init__(
        self,
        plan: Sequence[tuple[str, int]],
        on_progress: ProgressCallback | None = None,
        costs: StageCosts | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.costs = costs or StageCosts()
        self.stages = [
            _Stage(name, frames, frames * self.costs.estimate(name)) for name, frames in plan if frames > 0
        ]
        self.total_weight = sum(s.weight for s in self.stages) or 1.0
        self.on_progress = on_progress
        self.clock = clock
        self.current = -1
        self.percent = 0.0

    def _enter(self, name: str, now: float) -> _Stage:
        """The stage called `name`, started now if it is a later one; earlier stages are complete."""
        index = next((i for i, s in enumerate(self.stages) if s.name == name), None)
        if index is None:
            raise ValueError(f"stage {name!r} is not in this render's plan")
        if index < self.current:
            raise ValueError(f"stage {name!r} reported after {self.stages[self.current].name!r}")
        while self.current < index:
            if self.current >= 0:
                self._close(self.stages[self.current], now)
            self.current += 1
            self.stages[self.current].started = now
            self.stages[self.current].window_start = (now, 0)
        return self.stages[index]

    def _close(self, stage: _Stage, now: float) -> None:
        if stage.started is not None and stage.done > 0:
            self.costs.record(stage.name, stage.done, now - stage.started)
        stage.done = max(stage.done, stage.total)

    def _measure(self, stage: _Stage, now: float) -> None:
        since, frames = stage.window_start
        elapsed = now - since
        if elapsed < SAMPLE_SECONDS or stage.done <= frames:
            return
        sample = (stage.done - frames) / elapsed
        if stage.rate is None:
            stage.rate = sample
        else:
            stage.rate += (1 - math.exp(-elapsed / SMOOTHING_SECONDS)) * (sample - stage.rate)
        stage.window_start = (now, stage.done)

    def _rate(self, stage: _Stage, now: float) -> float | None:
        """The stage's smoothed frames per second, once it has run MIN_SECONDS."""
        if stage.started is None or now - stage.started < MIN_SECONDS:
            return None
        return stage.rate

    def _eta(self, stage: _Stage, now: float) -> float | None:
        seconds = 0.0
        for s in (stage, *self.stages[self.current + 1 :]):
            remaining = max(s.total - s.done, 0)
            rate = self._rate(s, now)
            if rate:
                seconds += remaining / rate
            elif s.name in self.costs.measured or s.name == "encoding":
                seconds += remaining * self.costs.estimate(s.name)
            else:
                return None
        return seconds

    def update(self, stage_name: str, done: int, total: int) -> Progress:
        """Report `done` of `total` frames of a stage; the first report of a stage starts its clock."""
        now = self.clock()
        stage = self._enter(stage_name, now)
        stage.total = max(total, done, 1)
        stage.done = max(stage.done, done)
        self._measure(stage, now)
        before = sum(s.weight for s in self.stages[: self.current])
        raw = 100 * (before + stage.weight * stage.done / stage.total) / self.total_weight
        self.percent = min(100.0, max(self.percent, raw))
        fps, eta = self._rate(stage, now), self._eta(stage, now)
        progress = Progress(stage.name, stage.done, stage.total, self.percent, eta, fps)
        if self.on_progress is not None:
            self.on_progress(progress)
        return progress

    def finish(self) -> None:
        """The render is complete: the last stage's cost is recorded."""
        if self.current >= 0:
            self._close(self.stages[self.current], self.clock())


class ProgressBar:
    """A one-line terminal bar: stage, overall percent, the stage's frames, fps and ETA.

    Silent when `stream` is not a terminal; redrawn at most every `min_interval` seconds.
    """

    def __init__(
        self, stream: TextIO | None = None, min_interval: float = 0.2, width: int = 30, unit: str = "frames"
    ):
        self.stream = stream or sys.stderr  # read when built: a default bound at import goes stale
        self.unit = unit
        self.enabled = self.stream.isatty()
        self.min_interval = min_interval
        self.width = width
        self.last = 0.0
        self.stage: str | None = None

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        finished = progress.frames_done >= progress.frames_total
        if not self.enabled or (
            now - self.last < self.min_interval and not finished and progress.stage == self.stage
        ):
            return
        self.last, self.stage = now, progress.stage
        filled = int(self.width * progress.overall_percent / 100)
        bar = "#" * filled + "-" * (self.width - filled)
        fps = "  -- fps" if progress.fps is None else f"{progress.fps:5.1f} fps"
        eta = "ETA   --" if progress.eta_seconds is None else f"ETA {progress.eta_seconds:5.1f}s"
        self.stream.write(
            f"\r{progress.stage:<9} [{bar}] {progress.overall_percent:5.1f}%  "
            f"{progress.frames_done}/{progress.frames_total} {self.unit}  {fps}  {eta}   "
        )
        self.stream.flush()

    def count(self, stage: str, done: int, total: int) -> None:
        """Draw a plain count (graphs converted, say) that has no rate of its own."""
        self(Progress(stage, done, total, 100 * done / max(total, 1), None, None))

    def close(self) -> None:
        """End the bar's line, if it drew one; safe to call more than once."""
        if self.enabled and self.last:
            self.stream.write("\n")
            self.stream.flush()
            self.last = 0.0
