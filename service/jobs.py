"""A queued render as the API shows it: RQ's job state and the worker's notes, as one resource.

RQ knows the status and the times; the worker writes progress, timings, the result summary and
a failure's `{code, message}` into the job's meta. A cancel surfaces from RQ as canceled (taken off
the queue) or as failed with the code `canceled` (stopped between batches by the worker).
"""

from datetime import datetime

from rq.job import Job, JobStatus

from service.schemas import (
    PROGRESS_STAGES,
    ErrorDetail,
    JobInputs,
    JobResource,
    JobResult,
    JobStatusName,
    JobTimings,
    Progress,
)

TERMINAL = {"succeeded", "failed", "canceled"}
_RQ_STATUS: dict[JobStatus, JobStatusName] = {
    JobStatus.CREATED: "queued",
    JobStatus.QUEUED: "queued",
    JobStatus.DEFERRED: "queued",
    JobStatus.SCHEDULED: "queued",
    JobStatus.STARTED: "started",
    JobStatus.FINISHED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "canceled",
    JobStatus.CANCELED: "canceled",
}


def job_status(job: Job) -> JobStatusName:
    status = _RQ_STATUS.get(job.get_status(refresh=False), "queued")
    if status == "failed" and job.meta.get("error", {}).get("code") == "canceled":
        return "canceled"
    return status


def _failure(job: Job) -> ErrorDetail:
    """The worker's own account, or what RQ recorded when the worker could not write one."""
    if "error" in job.meta:
        return ErrorDetail(**job.meta["error"])
    result = job.latest_result()
    trace = (result.exc_string or "") if result is not None else ""
    if "AbandonedJobError" in trace:
        return ErrorDetail(code="worker_lost", message="the worker running this job stopped unexpectedly")
    if "JobTimeoutException" in trace:
        return ErrorDetail(code="timeout", message="the render took longer than JOB_TIMEOUT")
    return ErrorDetail(code="internal_error", message="the render failed unexpectedly")


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 4) if start and end else None


def describe(job: Job) -> JobResource:
    status = job_status(job)
    meta = job.meta
    inputs = None
    if "inputs" in meta:
        request = job.args[1]
        inputs = JobInputs(**meta["inputs"], model=request["model"], options=request["options"])

    noted = meta.get("progress", {})
    done = int(noted.get("frames_done", 0))
    total = noted.get("frames_total") or (inputs.driving.frames if inputs else None)
    if status == "succeeded":
        total = done = int(meta.get("result", {}).get("frames", done))
    percent = min(100.0, round(100 * done / total, 1)) if total else 0.0
    stage = noted.get("stage") if status == "started" and noted.get("stage") in PROGRESS_STAGES else None
    rate = noted.get("fps") or 0
    # While analysing, the rate says nothing about the render still to come.
    rendering = status == "started" and stage != "analysing"
    eta = round(max(total - done, 0) / rate, 1) if rendering and total and rate > 0 else None

    started_at = job.started_at if status != "queued" else None
    finished_at = job.ended_at if status in TERMINAL else None
    if status == "canceled" and finished_at is None and "canceled_at" in meta:
        finished_at = datetime.fromisoformat(meta["canceled_at"])
    timings = JobTimings(**meta.get("timings", {}))
    if timings.queue_wait is None:
        timings.queue_wait = _seconds_between(job.enqueued_at, started_at)

    return JobResource(
        id=job.id,
        status=status,
        created_at=job.created_at,
        started_at=started_at,
        finished_at=finished_at,
        progress=Progress(stage=stage, frames_done=done, frames_total=total, percent=percent),
        eta_seconds=eta,
        error=_failure(job) if status == "failed" else None,
        result_url=f"/jobs/{job.id}/result" if status == "succeeded" else None,
        result=JobResult(**meta["result"]) if status == "succeeded" and "result" in meta else None,
        inputs=inputs,
        timings=timings,
    )
