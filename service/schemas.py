"""Request options and response bodies of the API (pydantic v2); they are also the OpenAPI docs."""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contract.capabilities import ModelCapabilities
from contract.job import (
    ErrorDetail,
    InputSummary,
    JobResult,
    JobStatusName,
    JobTimings,
)
from contract.options import AnimationOptions
from contract.render import JobStage


class ErrorBody(BaseModel):
    error: ErrorDetail


class Progress(BaseModel):
    """How far the job is. `stage`: "queued", then while it runs "analysing" (passes over the driving
    video before the first frame: the crop following the subject, the search for a driving start),
    "rendering", "encoding" (what is left once the last frame is rendered: a loop's backward half,
    a GIF's palette passes, the final flush); None once it ended. `frames_done` and `frames_total`
    count the stage's own frames; `percent` is of the whole job and never goes down."""

    stage: JobStage | None = None
    frames_done: int = 0
    frames_total: int | None = None
    percent: float = 0.0
    eta_seconds: float | None = Field(None, description="seconds left, once the worker can estimate them")


class JobInputs(InputSummary):
    model: str
    options: AnimationOptions


JOB_EXAMPLE = {
    "id": "2c7c3b8e-9d1a-4a41-9a5e-0e1f3d6b2a10",
    "status": "started",
    "created_at": "2026-11-25T12:44:06.749Z",
    "started_at": "2026-11-25T12:44:06.757Z",
    "finished_at": None,
    "progress": {
        "stage": "rendering", "frames_done": 120, "frames_total": 250, "percent": 48.0, "eta_seconds": 3.1
    },
    "eta_seconds": 3.1,
    "error": None,
    "result_url": None,
    "result": None,
    "inputs": {
        "source": {"format": "jpeg", "width": 720, "height": 720, "bytes": 98910},
        "driving": {
            "format": "mp4", "width": 512, "height": 512, "fps": 25.0, "duration": 10.0, "frames": 250,
            "audio": True, "bytes": 1430968,
        },
        "model": "starter",
        "options": {"mode": "relative", "adapt_scale": True, "driving_start": 0, "audio": True,
                    "crop": "auto", "paste_back": False},
    },
    "timings": {"queue_wait": 0.004, "decode": None, "inference": None, "encode": None, "render": None},
}  # fmt: skip


class JobResource(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [JOB_EXAMPLE]})

    id: str
    status: JobStatusName
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress
    eta_seconds: float | None = Field(None, description="progress.eta_seconds, where clients read it first")
    error: ErrorDetail | None = None
    result_url: str | None = None
    result: JobResult | None = None
    inputs: JobInputs | None = None
    timings: JobTimings


class ModelInfo(ModelCapabilities):
    """A model some worker has loaded: its capabilities as that worker published them."""

    device: str = Field(examples=["cuda"])
    workers: int = Field(description="workers that have it loaded")


class ModelList(BaseModel):
    default: str
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    workers: int
    queued: int
