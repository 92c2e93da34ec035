"""A queued render as the API shows it: the job record (contract/job.py) as one resource."""

from contract.job import JobRecord
from service.schemas import JobInputs, JobResource, Progress


def describe(record: JobRecord) -> JobResource:
    job = record.job
    status = record.status()
    summary = record.inputs
    inputs = None
    if summary is not None:
        request = record.request
        inputs = JobInputs(**summary.model_dump(), model=request.model, options=request.options)

    # The worker's report (engine/progress.py): the running stage's frames, the overall percent (it
    # never lowers it) and its ETA; a queued job has none yet, a finished one is complete.
    noted = record.progress
    done = noted.frames_done
    total = noted.frames_total or (inputs.driving.frames if inputs else None)
    result = record.result if status == "succeeded" else None
    if result is not None:
        total = done = result.frames
        if result.poster is not None:  # the record names the stored file; a client gets its URL
            result = result.model_copy(update={"poster": f"/jobs/{record.id}/poster"})
    stage = {"queued": "queued", "started": noted.stage}.get(status)
    percent = 100.0 if result is not None else min(100.0, round(noted.overall_percent, 1))
    if status == "queued":
        percent = 0.0
    eta = noted.eta_seconds if status == "started" else None

    started_at = job.started_at if status != "queued" else None
    timings = record.timings
    if timings.queue_wait is None and started_at and job.enqueued_at:
        timings.queue_wait = round((started_at - job.enqueued_at).total_seconds(), 4)

    return JobResource(
        id=record.id,
        status=status,
        created_at=job.created_at,
        started_at=started_at,
        finished_at=record.ended_at if status in ("succeeded", "failed", "canceled") else None,
        progress=Progress(
            stage=stage, frames_done=done, frames_total=total, percent=percent, eta_seconds=eta
        ),
        eta_seconds=eta,
        error=record.error() if status == "failed" else None,
        result_url=f"/jobs/{record.id}/result" if status == "succeeded" else None,
        result=result,
        inputs=inputs,
        timings=timings,
    )
