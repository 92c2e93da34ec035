"""What a render reports, shared by the engine and the job record: its progress stages and its result.

Kept apart from contract/job.py, which wraps RQ's job, so that the engine imports no Redis or RQ.
"""

from typing import Literal, get_args

from pydantic import BaseModel, Field

from contract.options import OutputFormatName

ProgressStage = Literal["analysing", "rendering", "encoding"]
PROGRESS_STAGES: tuple[str, ...] = get_args(ProgressStage)
# What a client sees: the job's stage, queued before the worker's stages. One flat enumeration (not a
# union of two), which client generators turn into one enum type.
JobStage = Literal[("queued", *PROGRESS_STAGES)]


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
