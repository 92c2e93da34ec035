"""Request options and response bodies of the API (pydantic v2); they are also the OpenAPI docs."""

from datetime import datetime
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt

JobStatusName = Literal["queued", "started", "succeeded", "failed", "canceled"]
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class AnimateOptions(BaseModel):
    """The plain form fields of POST /animate, validated from their text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["relative", "absolute"] = Field(
        "relative", description="relative: the source keeps its pose and follows the driving motion"
    )
    adapt_scale: bool = Field(True, description="scale the motion by the ratio of the faces' sizes")
    driving_start: NonNegativeInt | Literal["best"] = Field(
        0, description="the driving frame matched to the source's pose: an index, or best to search"
    )
    audio: bool = Field(True, description="copy the driving video's audio into the result")
    crop: str | None = Field(
        None,
        pattern=r"^(none|auto|face|body|\d{1,5},\d{1,5},\d{1,5},\d{1,5})$",
        description="framing of the subject: none, auto, face, body or x,y,w,h; unset: the engine's default",
    )
    paste_back: bool | None = Field(
        None, description="paste the animated crop back into the full source; unset: the engine's default"
    )


class ErrorDetail(BaseModel):
    code: str = Field(examples=["job_not_found"])
    message: str = Field(examples=["no job 2c7c3b8e-9d1a-4a41-9a5e-0e1f3d6b2a10"])
    field: str | None = Field(None, description="the request field at fault, when there is one")


class ErrorBody(BaseModel):
    error: ErrorDetail


ProgressStage = Literal["analysing", "rendering"]
PROGRESS_STAGES: tuple[str, ...] = get_args(ProgressStage)


class Progress(BaseModel):
    """Of the running stage: with a crop, "analysing" (the subject followed through the driving
    video, a fast pass) comes before "rendering"; frames and percent restart at 0 for each."""

    stage: ProgressStage | None = None
    frames_done: int = 0
    frames_total: int | None = None
    percent: float = 0.0


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


class JobInputs(BaseModel):
    source: SourceSummary
    driving: DrivingSummary
    model: str
    options: AnimateOptions


class JobTimings(BaseModel):
    """Seconds: waiting in the queue, then the engine's stages (they overlap) and the whole render."""

    queue_wait: float | None = None
    decode: float | None = None
    inference: float | None = None
    encode: float | None = None
    render: float | None = None
    precision: str | None = Field(None, description="fp32, bf16 or fp16: what the render ran in")


class JobResult(BaseModel):
    frames: int
    fps: float
    width: int
    height: int
    audio: bool
    driving_start: int
    precision: str


JOB_EXAMPLE = {
    "id": "2c7c3b8e-9d1a-4a41-9a5e-0e1f3d6b2a10",
    "status": "started",
    "created_at": "2026-11-25T12:44:06.749Z",
    "started_at": "2026-11-25T12:44:06.757Z",
    "finished_at": None,
    "progress": {"stage": "rendering", "frames_done": 120, "frames_total": 250, "percent": 48.0},
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
        "options": {"mode": "relative", "adapt_scale": True, "driving_start": 0, "audio": True, "crop": None,
                    "paste_back": None},
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
    eta_seconds: float | None = None
    error: ErrorDetail | None = None
    result_url: str | None = None
    result: JobResult | None = None
    inputs: JobInputs | None = None
    timings: JobTimings


class ModelInfo(BaseModel):
    name: str = Field(examples=["starter"])
    frame_size: tuple[int, int] = Field(
        description="height, width the model animates at", examples=[[256, 256]]
    )
    num_kp: int = Field(description="keypoints the model detects", examples=[10])
    device: str = Field(examples=["cuda"])
    workers: int = Field(description="live workers that have it loaded")


class ModelList(BaseModel):
    default: str
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    workers: int
    queued: int
