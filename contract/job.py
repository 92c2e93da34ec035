"""The job record: one typed view of a job, written by the API and the workers, read by both.

RQ keeps a job's status and times; everything of ours lives in the job's meta under the names of
`JobRecord`'s fields and is read and written only through this module, as pydantic models:

- `inputs`, `owner`, `webhook_url`: written once by the API when it queues the job;
- `progress`, `timings`, `result`: written by the worker while and after it renders;
- `outcome`: how the job ended (succeeded, failed with an error, or canceled) and when, written by
  whoever ended it through `contract.outcomes.job_ended`. It is the one place a terminal status is
  read from, so a cancel is "canceled" whether the job was taken off the queue or stopped mid-render.

The request itself (model and options) is the job's argument, so a worker gets it as JSON from RQ.
"""

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from rq.job import Job, JobStatus

from contract.options import AnimationOptions, OutputFormatName

JobStatusName = Literal["queued", "started", "succeeded", "failed", "canceled"]
OutcomeName = Literal["succeeded", "failed", "canceled"]
ProgressStage = Literal["analysing", "rendering", "encoding"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

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


class JobRequest(BaseModel):
    """The job's argument: which model, with which options."""

    model: str = Field(pattern=MODEL_NAME_PATTERN)
    options: AnimationOptions = AnimationOptions()


class ErrorDetail(BaseModel):
    code: str = Field(examples=["job_not_found"])
    message: str = Field(examples=["no job 2c7c3b8e-9d1a-4a41-9a5e-0e1f3d6b2a10"])
    field: str | None = Field(None, description="the request field at fault, when there is one")


class ProgressReport(BaseModel):
    """What the worker last reported (worker/progress.py): the running stage's frames, the percent of
    the whole render (never lowered) and the estimated seconds left (None until it can be estimated)."""

    stage: ProgressStage | None = None
    frames_done: int = 0
    frames_total: int | None = None
    overall_percent: float = Field(0.0, ge=0, le=100)
    eta_seconds: float | None = None
    fps: float | None = None


class SourceSummary(BaseModel):
    format: str
    width: int
    height: int
    bytes: int


class DrivingSummary(BaseModel):
    format: str
    width: int
    height: int
    fps: float
    duration: float
    frames: int
    audio: bool
    bytes: int


class InputSummary(BaseModel):
    source: SourceSummary
    driving: DrivingSummary


class JobTimings(BaseModel):
    """Seconds: waiting in the queue, then the engine's stages (they overlap) and the whole render."""

    queue_wait: float | None = None
    decode: float | None = None
    inference: float | None = None
    encode: float | None = None
    render: float | None = None
    precision: str | None = Field(None, description="fp32, bf16 or fp16: what the render ran in")


class JobResult(BaseModel):
    """The result's summary; the fields after `precision` have defaults, so records written before
    formats existed still read (as the MP4 they are)."""

    frames: int
    fps: float
    width: int
    height: int
    audio: bool
    driving_start: int
    precision: str
    format: OutputFormatName = "mp4"
    mime_type: str = "video/mp4"
    bytes: int = 0
    loop: bool = False
    poster: str | None = Field(
        None, description="the poster's URL, /jobs/{id}/poster, when one was made (the record: its file name)"
    )


class Outcome(BaseModel):
    status: OutcomeName
    at: datetime
    error: ErrorDetail | None = None


class JobRecord:
    """A job's RQ record with our fields typed; `save` writes the given fields into its meta."""

    def __init__(self, job: Job):
        self.job = job

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def request(self) -> JobRequest:
        return JobRequest.model_validate(self.job.args[1])

    def _get(self, name: str, model: type[BaseModel]) -> Any:
        value = self.job.meta.get(name)
        return model.model_validate(value) if value else None

    @property
    def inputs(self) -> InputSummary | None:
        return self._get("inputs", InputSummary)

    @property
    def progress(self) -> ProgressReport:
        return self._get("progress", ProgressReport) or ProgressReport()

    @property
    def timings(self) -> JobTimings:
        return self._get("timings", JobTimings) or JobTimings()

    @property
    def result(self) -> JobResult | None:
        return self._get("result", JobResult)

    @property
    def outcome(self) -> Outcome | None:
        return self._get("outcome", Outcome)

    @property
    def owner(self) -> str | None:
        return self.job.meta.get("owner")

    @property
    def webhook_url(self) -> str | None:
        return self.job.meta.get("webhook_url")

    def status(self) -> JobStatusName:
        outcome = self.outcome
        if outcome is not None:
            return outcome.status
        return _RQ_STATUS.get(self.job.get_status(refresh=False), "queued")

    @property
    def ended_at(self) -> datetime | None:
        outcome = self.outcome
        return outcome.at if outcome is not None else self.job.ended_at

    def error(self) -> ErrorDetail | None:
        """The failure's account: the outcome's, else what RQ recorded when nobody could write one."""
        outcome = self.outcome
        if outcome is not None:
            return outcome.error
        if self.status() != "failed":
            return None
        result = self.job.latest_result()
        trace = (result.exc_string or "") if result is not None else ""
        if "AbandonedJobError" in trace:
            return ErrorDetail(code="worker_lost", message="the worker running this job stopped unexpectedly")
        if "JobTimeoutException" in trace:
            return ErrorDetail(code="timeout", message="the render took longer than JOB_TIMEOUT")
        return ErrorDetail(code="internal_error", message="the render failed unexpectedly")

    def save(self, **fields: BaseModel | None) -> None:
        """Write these fields (None removes one) and save the meta; RedisError propagates."""
        for name, value in fields.items():
            if value is None:
                self.job.meta.pop(name, None)
            else:
                self.job.meta[name] = value.model_dump(mode="json")
        self.job.save_meta()


def queued_meta(inputs: InputSummary, owner: str | None, webhook_url: str | None) -> dict[str, Any]:
    """The meta a job is queued with."""
    meta: dict[str, Any] = {"inputs": inputs.model_dump(mode="json")}
    if owner is not None:
        meta["owner"] = owner
    if webhook_url:
        meta["webhook_url"] = webhook_url
    return meta


def now() -> datetime:
    return datetime.now(UTC)
