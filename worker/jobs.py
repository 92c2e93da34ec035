"""The RQ entry point: `render_job` renders one queued job with a model loaded when the worker started.

RQ calls it by name with JSON arguments (job id, {model, options}); the files are found in the job's
folder, never taken from the payload. What the API shows is written into the job's meta: progress (at
most PROGRESS_INTERVAL apart), timings, the result summary, and on failure the RenderError's code
(a full or unwritable disk is `storage_error`). Every end is also counted for /metrics and triggers
the job's webhook (service/outcomes.py).
"""

import errno
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from rq import get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException

from service.outcomes import job_ended
from service.queue import JobQueue
from service.settings import Settings
from service.storage import DRIVING, SOURCE, JobStore
from worker.catalog import LoadedModel
from worker.errors import InvalidVideo, RenderCanceled, RenderError
from worker.hardware import default_precision
from worker.pipeline import RenderOptions
from worker.video_io import load_image, probe_video

PROGRESS_INTERVAL = 0.25  # seconds between progress writes: a few per second at most
CANCEL_POLL_INTERVAL = 0.2  # seconds between reads of the cancel flag
OPTION_NAMES = ("mode", "adapt_scale", "driving_start", "audio", "crop", "paste_back")
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
log = logging.getLogger("worker")


class WorkerStopping(Exception):
    """The worker was asked to stop mid-render; the job goes back to the queue, not to failed."""


@dataclass
class Engine:
    """What a worker process holds between jobs."""

    models: dict[str, LoadedModel]
    settings: Settings
    queue: JobQueue
    stopping: threading.Event = field(default_factory=threading.Event)
    interrupted: set[str] = field(default_factory=set)  # ids of jobs to hand back to the queue


_engine: Engine | None = None


def install(engine: Engine) -> None:
    global _engine
    _engine = engine


class JobReporter:
    """Progress into the job's meta, throttled; cancel requests and worker shutdown polled between batches."""

    def __init__(self, job: Job, engine: Engine):
        self.job = job
        self.engine = engine
        self.started = time.monotonic()
        self.stage = "rendering"
        self.last_write = 0.0
        self.last_poll = 0.0
        self.canceled = False

    def save(self, **notes: Any) -> None:
        """Best effort: a Redis hiccup must not fail a render that is going well."""
        self.job.meta.update(notes)
        try:
            self.job.save_meta()
        except redis.exceptions.RedisError as exc:
            log.warning("job %s: could not save its progress: %s", self.job.id, exc)

    def progress(self, done: int, total: int, stage: str = "rendering") -> None:
        now = time.monotonic()
        if stage != self.stage:  # each stage has its own rate, so its own clock
            self.stage, self.started, self.last_write = stage, now, 0.0
        if now - self.last_write < PROGRESS_INTERVAL and done < total:
            return
        self.last_write = now
        fps = done / max(now - self.started, 1e-6)
        self.save(progress={"stage": stage, "frames_done": done, "frames_total": total, "fps": round(fps, 2)})

    def should_cancel(self) -> bool:
        if self.engine.stopping.is_set():
            return True
        now = time.monotonic()
        if now - self.last_poll >= CANCEL_POLL_INTERVAL:
            self.last_poll = now
            try:
                self.canceled = self.engine.queue.cancel_requested(self.job.id)
            except redis.exceptions.RedisError:
                self.canceled = False
        return self.canceled


def _options(request: dict[str, Any], settings: Settings) -> RenderOptions:
    given = request.get("options") or {}
    return RenderOptions(
        **{name: given[name] for name in OPTION_NAMES if given.get(name) is not None},
        batch_size=settings.batch_size,
        device=settings.worker_device,
        precision=settings.precision or default_precision(settings.worker_device),
    )


def _render(job_id: str, request: dict[str, Any], engine: Engine, reporter: JobReporter) -> dict[str, Any]:
    settings = engine.settings
    store = JobStore(settings.data_dir)
    name = request.get("model") or settings.default_model
    if name not in engine.models:
        raise RenderError(f"model {name!r} is not loaded by this worker", "unknown_model")
    source = store.input_path(job_id, SOURCE)
    driving = store.input_path(job_id, DRIVING)
    if source is None or driving is None:
        raise RenderError("the job's input files are missing", "inputs_missing")
    store.remove_partials(job_id)  # what an attempt on a worker that died left behind
    options = _options(request, settings)
    options.validate()
    image = load_image(source, settings.max_pixels)
    info = probe_video(driving)
    if info.duration > settings.max_driving_seconds or info.frames > settings.max_driving_frames:
        raise InvalidVideo(f"driving lasts {info.duration:.1f} s, {info.frames} frames: over the limits")
    if info.width * info.height > settings.max_driving_pixels:
        raise InvalidVideo(f"driving is {info.width}x{info.height}: over MAX_DRIVING_PIXELS")
    renderer = engine.models[name].renderer
    result = renderer.render(
        image, driving, store.result_path(job_id), options, reporter.progress, reporter.should_cancel, info
    )
    return result.to_dict()


def render_job(job_id: str, request: dict[str, Any]) -> dict[str, Any]:
    """Render job `job_id`; the MP4 lands in its folder as result.mp4. Returns the result summary."""
    if _engine is None:
        raise RuntimeError("no models are loaded in this process: run workers with `python -m worker.run`")
    engine = _engine
    job = get_current_job()
    reporter = JobReporter(job, engine)
    queue_wait = (datetime.now(UTC) - job.enqueued_at).total_seconds() if job.enqueued_at else None
    reporter.save(
        progress={}, timings={"queue_wait": round(queue_wait, 4) if queue_wait is not None else None}
    )
    client = engine.queue.redis

    def failed(code: str, message: str) -> None:
        reporter.save(error={"code": code, "message": message})
        seconds = time.monotonic() - reporter.started
        frames = int(job.meta.get("progress", {}).get("frames_done", 0))
        job_ended(client, job, "canceled" if code == "canceled" else "failed", code, seconds, frames)

    try:
        summary = _render(job_id, request, engine, reporter)
    except RenderCanceled as exc:
        if engine.stopping.is_set():
            engine.interrupted.add(job_id)
            reporter.save(progress={}, timings={})
            raise WorkerStopping(f"job {job_id} interrupted by a worker shutdown") from exc
        failed(exc.code, "the job was canceled")
        raise
    except RenderError as exc:
        failed(exc.code, str(exc))
        raise
    except JobTimeoutException:
        failed("timeout", "the render took longer than JOB_TIMEOUT")
        raise
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            failed("internal_error", f"the render failed ({type(exc).__name__})")
            raise
        failed("storage_error", f"the result could not be stored ({exc.strerror})")
        raise
    except Exception as exc:
        failed("internal_error", f"the render failed ({type(exc).__name__})")
        raise
    timings = summary.pop("timings")
    reporter.save(
        result=summary,
        progress={"frames_done": summary["frames"], "frames_total": summary["frames"]},
        timings={
            **job.meta.get("timings", {}),
            "decode": timings["decode"],
            "inference": timings["inference"],
            "encode": timings["encode"],
            "render": timings["total"],
            "precision": summary["precision"],
        },
    )
    job_ended(client, job, "succeeded", None, time.monotonic() - reporter.started, summary["frames"], timings)
    return {**summary, "timings": timings}
