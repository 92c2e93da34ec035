"""The progress model: one overall percent that never runs backwards across stages, smoothed rates
and ETAs that only appear once measured, and a terminal bar that names the stage. A fake clock
drives it: no test here measures time."""

import io

import numpy as np
import pytest

from engine.progress import MIN_SECONDS, Progress, ProgressBar, ProgressModel, StageCosts


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run_stage(
    model: ProgressModel, clock: Clock, stage: str, frames: int, batch: int, seconds_per_batch: float
):
    """Reports a stage batch by batch, as the pipeline does; returns what the model said."""
    said = [model.update(stage, 0, frames)]
    for done in range(batch, frames + batch, batch):
        clock.now += seconds_per_batch
        said.append(model.update(stage, min(done, frames), frames))
    return said


def test_overall_percent_never_goes_backwards_across_stages():
    clock = Clock()
    seen: list[Progress] = []
    model = ProgressModel([("analysing", 90), ("rendering", 90), ("encoding", 181)], seen.append, clock=clock)
    run_stage(model, clock, "analysing", 90, 1, 0.01)
    run_stage(model, clock, "rendering", 90, 8, 0.4)
    run_stage(model, clock, "encoding", 181, 10, 0.05)
    percents = [p.overall_percent for p in seen]
    assert all(b >= a for a, b in zip(percents, percents[1:], strict=False)), "the bar never runs backwards"
    assert percents[-1] == pytest.approx(100.0)
    stages = [p.stage for p in seen]
    assert stages.index("rendering") > stages.index("analysing") and stages[-1] == "encoding"
    first_render = seen[stages.index("rendering")]
    assert 0 < first_render.overall_percent < 50, "the cheap analysis pass is a small share of the bar"
    assert first_render.frames_done == 0, "each stage counts its own frames from zero"


def test_a_stage_longer_than_planned_pauses_the_bar_instead_of_lowering_it():
    clock = Clock()
    model = ProgressModel([("rendering", 10), ("encoding", 1)], clock=clock)
    clock.now += 1
    at_nine = model.update("rendering", 9, 10).overall_percent
    clock.now += 1
    longer = model.update("rendering", 10, 20)  # the decoder found more frames than the probe said
    assert longer.overall_percent == at_nine
    assert longer.frames_total == 20


def test_no_rate_or_eta_until_measured_and_no_absurd_first_rate():
    clock = Clock()
    model = ProgressModel([("analysing", 50), ("rendering", 100), ("encoding", 1)], clock=clock)
    first = model.update("analysing", 0, 50)
    assert first.fps is None and first.eta_seconds is None
    said = run_stage(model, clock, "analysing", 50, 5, 0.05)
    assert all(p.eta_seconds is None for p in said), "the render's cost is unknown on a first job"
    switched = model.update("rendering", 4, 100)  # a batch reported at the very moment the stage starts
    assert switched.fps is None, "no rate from no elapsed time (was 1e9 fps)"
    said = run_stage(model, clock, "rendering", 100, 4, 0.2)  # 20 frames per second
    early = [p for p in said if p.fps is None]
    assert len(early) == MIN_SECONDS / 0.2, "no rate before MIN_SECONDS of the stage"
    measured = [p.fps for p in said if p.fps is not None]
    assert measured and all(19 <= fps <= 21 for fps in measured)
    halfway = said[len(said) // 2]
    expected = (100 - halfway.frames_done) / 20 + StageCosts().estimate("encoding")
    assert halfway.eta_seconds == pytest.approx(expected, rel=0.05)


def test_eta_is_smoothed_over_uneven_batches():
    clock = Clock()
    model = ProgressModel([("rendering", 800)], clock=clock)
    model.update("rendering", 0, 800)
    durations = np.random.default_rng(0).uniform(0.05, 0.75, 200)  # 4 frames per batch: 5 to 80 fps
    etas, naive, remaining = [], [], []
    for index, seconds in enumerate(durations):
        clock.now += seconds
        done = 4 * (index + 1)
        eta = model.update("rendering", done, 800).eta_seconds
        if eta is not None:
            etas.append(eta)
            remaining.append(800 - done)
            naive.append((800 - done) * seconds / 4)  # at the last batch's rate
    assert len(etas) > 150
    assert np.abs(np.diff(etas)).sum() < 0.1 * np.abs(np.diff(naive)).sum(), (
        "far steadier than batch by batch"
    )
    middle = len(etas) // 2
    mean_rate = 4 / durations.mean()
    assert etas[middle] == pytest.approx(remaining[middle] / mean_rate, rel=0.3)


def test_costs_measured_in_one_job_weigh_the_next_and_give_an_eta_while_analysing():
    costs = StageCosts()
    clock = Clock()
    first = ProgressModel([("analysing", 100), ("rendering", 100), ("encoding", 1)], costs=costs, clock=clock)
    run_stage(first, clock, "analysing", 100, 10, 0.01)  # 0.001 s a frame
    run_stage(first, clock, "rendering", 100, 10, 1.0)  # 0.1 s a frame
    run_stage(first, clock, "encoding", 1, 1, 0.01)
    first.finish()
    assert costs.estimate("analysing") == pytest.approx(0.001, rel=0.05)
    assert costs.estimate("rendering") == pytest.approx(0.1, rel=0.05)
    second = ProgressModel(
        [("analysing", 100), ("rendering", 100), ("encoding", 1)], costs=costs, clock=clock
    )
    said = run_stage(second, clock, "analysing", 100, 10, 0.01)
    assert said[-1].overall_percent < 2, "analysing is 1% of the measured work"
    assert said[-1].eta_seconds == pytest.approx(10, rel=0.1), "100 frames at the last job's 0.1 s"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_shows_the_stage_and_the_overall_percent():
    stream = Terminal()
    bar = ProgressBar(stream, min_interval=0)
    bar(Progress("analysing", 3, 30, 2.5, None, None))
    bar(Progress("rendering", 12, 30, 40.0, 6.5, 8.0))
    bar.close()
    lines = stream.getvalue().split("\r")
    assert "analysing" in lines[1] and "2.5%" in lines[1] and "-- fps" in lines[1] and "ETA   --" in lines[1]
    assert "rendering" in lines[2] and "40.0%" in lines[2] and "8.0 fps" in lines[2] and "6.5s" in lines[2]
    assert "#" * 12 in lines[2] and "#" * 13 not in lines[2]
    quiet = io.StringIO()
    ProgressBar(quiet)(Progress("rendering", 1, 2, 50.0, None, None))
    assert quiet.getvalue() == "", "silent when not a terminal"
