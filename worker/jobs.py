"""The RQ entry point: `render_job` renders one queued job with a model loaded when the worker started.

RQ calls it by name with JSON arguments (job id, the `JobRequest`); the input files are fetched from
the store (contract/storage) into this worker's scratch folder, never taken from the payload. The
result is rendered there and published to the store whole. What the API shows goes into the job
record (contract/job.py): progress (at most PROGRESS_INTERVAL apart), timings, the result summary;
every end goes through `contract.outcomes.job_ended`, which records it, counts it and schedules the
job's webhook.
"""

import contextlib
import errno
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import redis
from pydantic import ValidationError
from rq import Retry, get_current_job
from rq.timeouts import JobTimeoutException

from contract.job import ErrorDetail, JobRecord, JobRequest, JobResult, JobTimings, ProgressReport
from contract.options import first_error
from contract.outcomes import job_ended
from contract.queue import JobQueue
from contract.redaction import without_paths
from contract.settings import Settings
from contract.storage import DRIVING, POSTER, SOURCE, JobStore, StorageError, result_name
from engine.errors import InvalidVideo, RenderCanceled, RenderError
from engine.hardware import default_precision
from engine.media.video_io import load_image, probe_video
from engine.pipeline import RenderOptions, RenderResult
from engine.progress import Progress
from worker.catalog import LoadedModel
from worker.shutdown import StopRequest

PROGRESS_INTERVAL = 0.25  # seconds between progress writes: a few per second at most
CANCEL_POLL_INTERVAL = 0.2  # seconds between reads of the cancel flag
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
FIRST_STORE_RETRY = 0.5  # seconds before a failed fetch or publish is tried again; doubled each time
MAX_STORE_RETRY = 8.0
STORE_WAIT_PREFIX = "animate:store-wait:"  # job id -> when it first failed to reach the store
MAX_HAND_BACKS = 1_000_000  # RQ's count of a job's returns to the queue: STORE_OUTAGE_SECONDS ends them
T = TypeVar("T")
log = logging.getLogger("worker")


class WorkerStopping(Exception):
    """The worker's stop grace ran out mid-render; the job goes back to the queue, not to failed."""


class StoreUnreachable(Exception):
    """The store failed every try for STORE_RETRY_SECONDS: the job goes back to the queue, not to
    failed, until it has waited STORE_OUTAGE_SECONDS."""


@dataclass
class WorkerContext:
    """What a worker process holds between jobs."""

    models: dict[str, LoadedModel]
    settings: Settings
    queue: JobQueue
    store: JobStore
    scratch: Path  # this process's own folder for inputs and renders
    stop: StopRequest  # SIGTERM's grace (worker/shutdown.py)
    interrupted: set[str] = field(default_factory=set)  # ids of jobs to hand back to the queue


_context: WorkerContext | None = None


def install(context: WorkerContext) -> None:
    global _context
    _context = context


class JobReporter:
    """Progress into the job record, throttled; cancel requests and the stop grace polled between batches."""

    def __init__(self, record: JobRecord, context: WorkerContext):
        self.record = record
        self.context = context
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
        """The engine's progress (engine/progress.py) into the record: every change of stage and every
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
        if self.context.stop.must_hand_back():
            return True
        now = time.monotonic()
        if now - self.last_poll >= CANCEL_POLL_INTERVAL:
            self.last_poll = now
            try:
                self.canceled = self.context.queue.cancel_requested(self.record.id)
            except redis.exceptions.RedisError:
                self.canceled = False
        return self.canceled


def _request(record: JobRecord) -> JobRequest:
    try:
        return record.request
    except ValidationError as exc:
        raise RenderError(f"the job's request is invalid: {first_error(exc)[1]}", "invalid_option") from None


def _render(record: JobRecord, context: WorkerContext, reporter: JobReporter, scratch: Path) -> RenderResult:
    settings = context.settings
    request = _request(record)
    if request.model not in context.models:
        raise RenderError(f"model {request.model!r} is not loaded by this worker", "unknown_model")
    inputs = _with_store(
        reporter, "fetching the inputs", lambda: context.store.fetch_inputs(record.id, scratch)
    )
    _store_reached(context, record.id)
    if SOURCE not in inputs or DRIVING not in inputs:
        raise RenderError("the job's input files are missing", "inputs_missing")
    options = RenderOptions(
        **request.options.model_dump(),
        batch_size=settings.batch_size,
        device=settings.worker_device,
        precision=settings.precision or default_precision(settings.worker_device),
    )
    image = load_image(inputs[SOURCE], settings.max_pixels, reporter.should_cancel)
    info = probe_video(inputs[DRIVING], settings.max_driving_pixels)
    if info.duration > settings.max_driving_seconds or info.frames > settings.max_driving_frames:
        raise InvalidVideo(f"driving lasts {info.duration:.1f} s, {info.frames} frames: over the limits")
    if info.width * info.height > settings.max_driving_pixels:
        raise InvalidVideo(f"driving is {info.width}x{info.height}: over MAX_DRIVING_PIXELS")
    pipeline = context.models[request.model].pipeline
    out = scratch / result_name(options.format)
    poster = scratch / POSTER
    result = pipeline.render(
        image, inputs[DRIVING], out, options, reporter.progress, reporter.should_cancel, info, poster
    )
    if result.poster is not None:
        _with_store(
            reporter, "publishing the poster", lambda: context.store.publish(record.id, POSTER, poster)
        )
    name = result_name(result.format)
    _with_store(reporter, "publishing the result", lambda: context.store.publish(record.id, name, out))
    return result


def _with_store(reporter: JobReporter, what: str, operation: Callable[[], T]) -> T:
    """`operation` (a fetch or a publish), tried again while the store fails, 0.5, 1, 2... s apart for
    up to STORE_RETRY_SECONDS, then StoreUnreachable; a cancel or a shutdown ends the wait."""
    give_up = time.monotonic() + reporter.context.settings.store_retry_seconds
    delay = FIRST_STORE_RETRY
    while True:
        try:
            return operation()
        except StorageError as exc:
            pause = min(delay, give_up - time.monotonic())
            if pause <= 0:
                raise StoreUnreachable(f"{what}: {exc}") from exc
            job_id = reporter.record.id
            log.warning("job %s: the store failed %s (%s); again in %.1f s", job_id, what, exc, pause)
        _pause(reporter, pause)
        delay = min(2 * delay, MAX_STORE_RETRY)


def _pause(reporter: JobReporter, seconds: float) -> None:
    """Wait `seconds`; RenderCanceled as soon as the job is canceled or the worker stops."""
    resume = time.monotonic() + seconds
    while time.monotonic() < resume:
        if reporter.should_cancel():
            raise RenderCanceled("the job was canceled")
        time.sleep(min(CANCEL_POLL_INTERVAL, max(0.0, resume - time.monotonic())))


def _store_reached(context: WorkerContext, job_id: str) -> None:
    """The job reached the store: a later outage has its own STORE_OUTAGE_SECONDS."""
    with contextlib.suppress(redis.exceptions.RedisError):
        context.queue.redis.delete(STORE_WAIT_PREFIX + job_id)


def _hand_back(context: WorkerContext, reporter: JobReporter) -> bool:
    """Put the job back in the queue, for this or another worker to try the store again; False once
    it has waited STORE_OUTAGE_SECONDS since it first failed to reach the store (it fails then)."""
    job_id, outage = reporter.record.id, context.settings.store_outage_seconds
    key = STORE_WAIT_PREFIX + job_id
    try:
        context.queue.redis.set(key, time.time(), nx=True, ex=int(outage) + 3600)
        since = float(context.queue.redis.get(key) or time.time())
    except redis.exceptions.RedisError:
        since = time.time()
    if time.time() - since >= outage:
        return False
    log.warning("job %s: the store is unreachable; the job goes back to the queue", job_id)
    reporter.save(progress=None, timings=None)
    return True


def _failure(exc: BaseException) -> ErrorDetail:
    """The account a failed render gives its client: never a path or a traceback; an input file is
    called by its upload field."""
    if isinstance(exc, RenderCanceled):
        return ErrorDetail(code="canceled", message="the job was canceled")
    if isinstance(exc, RenderError):
        return ErrorDetail(code=exc.code, message=without_paths(str(exc), (SOURCE, DRIVING)))
    if isinstance(exc, JobTimeoutException):
        return ErrorDetail(code="timeout", message="the render took longer than JOB_TIMEOUT")
    if isinstance(exc, StoreUnreachable):
        return ErrorDetail(code="storage_unavailable", message="the job store could not be reached in time")
    if isinstance(exc, StorageError):
        return ErrorDetail(code="storage_error", message="the job's files could not be read or stored")
    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        return ErrorDetail(code="storage_error", message=f"the result could not be stored ({exc.strerror})")
    return ErrorDetail(code="internal_error", message=f"the render failed ({type(exc).__name__})")


def render_job(job_id: str, request: dict[str, Any]) -> dict[str, Any] | Retry:
    """Render job `job_id` and publish its result to the store. Returns the result summary, or a
    Retry that puts the job back in the queue while the store cannot be reached."""
    if _context is None:
        raise RuntimeError("no models are loaded in this process: run workers with `python -m worker.run`")
    context = _context
    job = get_current_job()
    record = JobRecord(job)
    reporter = JobReporter(record, context)
    began = time.monotonic()
    queue_wait = (datetime.now(UTC) - job.enqueued_at).total_seconds() if job.enqueued_at else None
    reporter.save(
        progress=None,
        outcome=None,
        timings=JobTimings(queue_wait=round(queue_wait, 4) if queue_wait else None),
    )
    scratch = context.scratch / job_id
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        rendered = _render(record, context, reporter, scratch)
    except BaseException as exc:
        if isinstance(exc, StoreUnreachable) and _hand_back(context, reporter):
            return Retry(max=MAX_HAND_BACKS, enqueue_at_front=True)  # RQ queues it again, not failed
        if isinstance(exc, RenderCanceled) and context.stop.must_hand_back():
            context.interrupted.add(job_id)
            reporter.save(progress=None, timings=None)
            raise WorkerStopping(f"job {job_id} interrupted by a worker shutdown") from exc
        error = _failure(exc)
        if error.code == "internal_error":
            log.exception("job %s failed", job_id, extra={"job_id": job_id})
        status = "canceled" if error.code == "canceled" else "failed"
        job_ended(context.queue.redis, record, status, error, time.monotonic() - began, reporter.frames_done)
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
    job_ended(context.queue.redis, record, "succeeded", None, seconds, frames, timings)
    return rendered.model_dump()
