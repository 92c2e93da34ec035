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


class FramingReport(BaseModel):
    """Which part of the photo and of the driving video the model animated (the crop option), and why."""

    source: Literal["face", "body", "whole", "centre", "box"] = Field(
        description="of the photo: a square around its face, around the whole person, the whole picture, "
        "its centre square (no face found in a picture that is not square) or the crop box asked for"
    )
    driving: Literal["face", "body", "whole", "centre"] = Field(
        description="of the driving video: squares following its face or the whole person, its whole "
        "frames, or their centre squares (no face found)"
    )
    subject_found: bool | None = Field(
        description="whether a face was found in the photo (null: none was looked for, crop none or a box); "
        "false: the model animates the picture as it is, background included, which then moves too"
    )
    reason: str = Field(description="why, in a sentence for people")
    warning: str | None = Field(
        None, description="what the user should know, when no face was found in the photo; else null"
    )


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
    framing: FramingReport | None = Field(None, description="the crop chosen and why (null in older records)")
