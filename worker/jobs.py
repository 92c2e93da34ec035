"""The RQ entry point: `render_job` renders one queued job with a model loaded when the worker started.

RQ calls it by name with JSON arguments (job id, the `JobRequest`); the input files are fetched from
the store (contract/storage) into this worker's scratch folder, never taken from the payload. The
result is rendered there and published to the store whole. What the API shows goes into the job
record (contract/job.py): progress (at most PROGRESS_INTERVAL apart), timings, the result summary;
every end goes through `contract.outcomes.job_ended`, which records it, counts it and schedules the
job's webhook.
"""

import errno
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from pydantic import ValidationError
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from contract.job import ErrorDetail, JobRecord, JobRequest, JobResult, JobTimings, ProgressReport
from contract.options import first_error
from contract.outcomes import job_ended
from contract.queue import JobQueue
from contract.redaction import without_paths
from contract.settings import Settings
from contract.storage import DRIVING, POSTER, SOURCE, JobStore, StorageError, result_name
from worker.catalog import LoadedModel
from worker.errors import InvalidVideo, RenderCanceled, RenderError
from worker.hardware import default_precision
from worker.pipeline import RenderOptions, RenderResult
from worker.progress import Progress
from worker.shutdown import StopRequest
from worker.video_io import load_image, probe_video

PROGRESS_INTERVAL = 0.25  # seconds between progress writes: a few per second at most
CANCEL_POLL_INTERVAL = 0.2  # seconds between reads of the cancel flag
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
log = logging.getLogger("worker")


class WorkerStopping(Exception):
    """The worker's stop grace ran out mid-render; the job goes back to the queue, not to failed."""


@dataclass
class Engine:
    """What a worker process holds between jobs."""

    models: dict[str, LoadedModel]
    settings: Settings
    queue: JobQueue
    store: JobStore
    scratch: Path  # this process's own folder for inputs and renders
    stop: StopRequest  # SIGTERM's grace (worker/shutdown.py)
    interrupted: set[str] = field(default_factory=set)  # ids of jobs to hand back to the queue


_engine: Engine | None = None


def install(engine: Engine) -> None:
    global _engine
    _engine = engine


class JobReporter:
    """Progress into the job record, throttled; cancel requests and the stop grace polled between batches."""

    def __init__(self, record: JobRecord, engine: Engine):
        self.record = record
        self.engine = engine
        self.stage: str | None = None
        self.last_write = 0.0
        self.last_poll = 0.0
        self.canceled = False
        self.frames_done = 0

    def save(self, **fields: Any) -> None:
        """Best effort: a Redis hiccup must not fail a render that is going well."""
        try:
            self.record.save(**fields)
        except redis.exceptions.RedisError as exc:
            log.warning("job %s: could not save its progress: %s", self.record.id, exc)

    def progress(self, progress: Progress) -> None:
        """The engine's progress (worker/progress.py) into the record: every change of stage and every
        stage's end, otherwise at most every PROGRESS_INTERVAL."""
        now = time.monotonic()
        if progress.stage == "rendering":
            self.frames_done = progress.frames_done
        finished = progress.frames_done >= progress.frames_total
        if now - self.last_write < PROGRESS_INTERVAL and not finished and progress.stage == self.stage:
            return
        self.stage, self.last_write = progress.stage, now
        self.save(progress=ProgressReport.model_validate(progress.to_dict()))

    def should_cancel(self) -> bool:
        if self.engine.stop.must_hand_back():
            return True
        now = time.monotonic()
        if now - self.last_poll >= CANCEL_POLL_INTERVAL:
            self.last_poll = now
            try:
                self.canceled = self.engine.queue.cancel_requested(self.record.id)
            except redis.exceptions.RedisError:
                self.canceled = False
        return self.canceled


def _request(record: JobRecord) -> JobRequest:
    try:
        return record.request
    except ValidationError as exc:
        raise RenderError(f"the job's request is invalid: {first_error(exc)[1]}", "invalid_option") from None


def _render(record: JobRecord, engine: Engine, reporter: JobReporter, scratch: Path) -> RenderResult:
    settings = engine.settings
    request = _request(record)
    if request.model not in engine.models:
        raise RenderError(f"model {request.model!r} is not loaded by this worker", "unknown_model")
    inputs = engine.store.fetch_inputs(record.id, scratch)
    if SOURCE not in inputs or DRIVING not in inputs:
        raise RenderError("the job's input files are missing", "inputs_missing")
    options = RenderOptions(
        **request.options.model_dump(),
        batch_size=settings.batch_size,
        device=settings.worker_device,
        precision=settings.precision or default_precision(settings.worker_device),
    )
    image = load_image(inputs[SOURCE], settings.max_pixels)
    info = probe_video(inputs[DRIVING], settings.max_driving_pixels)
    if info.duration > settings.max_driving_seconds or info.frames > settings.max_driving_frames:
        raise InvalidVideo(f"driving lasts {info.duration:.1f} s, {info.frames} frames: over the limits")
    if info.width * info.height > settings.max_driving_pixels:
        raise InvalidVideo(f"driving is {info.width}x{info.height}: over MAX_DRIVING_PIXELS")
    renderer = engine.models[request.model].renderer
    out = scratch / result_name(options.format)
    poster = scratch / POSTER
    result = renderer.render(
        image, inputs[DRIVING], out, options, reporter.progress, reporter.should_cancel, info, poster
    )
    if result.poster is not None:
        engine.store.publish(record.id, POSTER, poster)
    engine.store.publish(record.id, result_name(result.format), out)
    return result


def _failure(exc: BaseException) -> ErrorDetail:
    """The account a failed render gives its client: never a path or a traceback; an input file is
    called by its upload field."""
    if isinstance(exc, RenderCanceled):
        return ErrorDetail(code="canceled", message="the job was canceled")
    if isinstance(exc, RenderError):
        return ErrorDetail(code=exc.code, message=without_paths(str(exc), (SOURCE, DRIVING)))
    if isinstance(exc, JobTimeoutException):
        return ErrorDetail(code="timeout", message="the render took longer than JOB_TIMEOUT")
    if isinstance(exc, StorageError):
        return ErrorDetail(code="storage_error", message="the job's files could not be read or stored")
    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        return ErrorDetail(code="storage_error", message=f"the result could not be stored ({exc.strerror})")
    return ErrorDetail(code="internal_error", message=f"the render failed ({type(exc).__name__})")


def render_job(job_id: str, request: dict[str, Any]) -> dict[str, Any]:
    """Render job `job_id` and publish its result to the store. Returns the result summary."""
    if _engine is None:
        raise RuntimeError("no models are loaded in this process: run workers with `python -m worker.run`")
    engine = _engine
    job = get_current_job()
    record = JobRecord(job)
    reporter = JobReporter(record, engine)
    began = time.monotonic()
    queue_wait = (datetime.now(UTC) - job.enqueued_at).total_seconds() if job.enqueued_at else None
    reporter.save(
        progress=None,
        outcome=None,
        timings=JobTimings(queue_wait=round(queue_wait, 4) if queue_wait else None),
    )
    scratch = engine.scratch / job_id
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        rendered = _render(record, engine, reporter, scratch)
    except BaseException as exc:
        if isinstance(exc, RenderCanceled) and engine.stop.must_hand_back():
            engine.interrupted.add(job_id)
            reporter.save(progress=None, timings=None)
            raise WorkerStopping(f"job {job_id} interrupted by a worker shutdown") from exc
        error = _failure(exc)
        if error.code == "internal_error":
            log.exception("job %s failed", job_id, extra={"job_id": job_id})
        status = "canceled" if error.code == "canceled" else "failed"
        job_ended(engine.queue.redis, record, status, error, time.monotonic() - began, reporter.frames_done)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    timings = rendered.timings
    done = record.timings.model_copy(
        update={
            "decode": timings["decode"],
            "inference": timings["inference"],
            "encode": timings["encode"],
            "render": timings["total"],
            "precision": rendered.precision,
        }
    )
    frames = rendered.frames
    result = JobResult(**rendered.model_dump(exclude={"timings"}))
    reporter.save(
        result=result,
        progress=ProgressReport(
            stage="rendering", frames_done=frames, frames_total=frames, overall_percent=100.0, eta_seconds=0.0
        ),
        timings=done,
    )
    seconds = time.monotonic() - began
    job_ended(engine.queue.redis, record, "succeeded", None, seconds, frames, timings)
    return rendered.model_dump()
