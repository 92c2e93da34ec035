"""The options of one animation: what a client may choose, checked by the same type at every edge.

The HTTP form (service/submission.py) and the command line (cli/main.py) both build an
`AnimationOptions`, so a value refused by one is refused by the other with the same message; the job
carries it to the worker as JSON and the worker reads it back through the same type.
"""

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, field_validator, model_validator

CROP_PATTERN = r"^(none|auto|face|body|\d{1,5},\d{1,5},\d{1,5},\d{1,5})$"
Mode = Literal["relative", "absolute", "avd"]  # every family's modes are among these; GET /models says whose
Region = Literal["all", "expression", "pose", "lips", "eyes"]
DrivingOption = Literal["expression-friendly", "pose-friendly"]
OutputFormatName = Literal["mp4", "webm", "gif", "webp"]  # engine/media/output.py's FORMATS


MOTION_OPTIONS = (  # what a model may or may not offer (contract/capabilities.py); the rest any model does
    "mode",
    "adapt_scale",
    "background_motion",
    "region",
    "driving_option",
    "stitching",
    "multiplier",
    "eye_retargeting",
    "lip_retargeting",
    "normalize_lips",
)


class AnimationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = Field(
        "relative",
        description=(
            "relative: the source keeps its pose and follows the driving motion; absolute: it takes the "
            "driving pose; avd (models with a trained AVD network): the driving motion disentangled "
            "from the driving identity. GET /models lists each model's modes"
        ),
    )
    adapt_scale: bool = Field(True, description="scale the motion by the ratio of the faces' sizes")
    driving_start: NonNegativeInt | Literal["best"] = Field(
        0, description="the driving frame matched to the source's pose: an index, or best to search"
    )
    audio: bool = Field(True, description="copy the driving video's audio into the result")
    crop: str = Field(
        "auto",
        json_schema_extra={"pattern": CROP_PATTERN},  # checked below, with a message for people
        description="framing of the subject: none, auto, face, body or x,y,w,h",
    )
    paste_back: bool = Field(False, description="paste the animated crop back into the full source image")
    background_motion: bool = Field(
        False, description="move the background too (models with a background motion predictor)"
    )
    region: Region = Field(
        "all", description="what of the driving motion the face takes: all, expression, pose, lips or eyes"
    )
    driving_option: DrivingOption = Field(
        "expression-friendly",
        description="relative motion tuned for expressions (scaled to the source) or for head poses",
    )
    stitching: bool = Field(
        True, description="keep the animated face seamless with the shoulders it is pasted on"
    )
    multiplier: float = Field(1.0, ge=0.0, le=4.0, description="scale the driving expression by this")
    eye_retargeting: bool = Field(False, description="drive the eyes' openness from the driving video's")
    lip_retargeting: bool = Field(False, description="drive the lips' openness from the driving video's")
    normalize_lips: bool = Field(False, description="close the source's lips before animating them")
    format: OutputFormatName = Field(
        "mp4",
        description=(
            "mp4 (H.264), webm (VP9), gif or webp (animated, at most 15 frames per second, smaller sides, "
            "looping forever, no audio)"
        ),
    )
    loop: bool = Field(False, description="play forward then backward, seamless on repeat (drops the audio)")
    poster: bool = Field(False, description="also make a JPEG of frame poster_frame of the result")
    poster_frame: NonNegativeInt = Field(
        0, description="the poster's frame: an index into the result's frames (after any frame skipping)"
    )

    def motion(self) -> tuple:
        """The motion options' values: sources animated together in one batch must share them."""
        return tuple(getattr(self, name) for name in MOTION_OPTIONS)

    @field_validator("crop")
    @classmethod
    def _crop_is_known(cls, value: str) -> str:
        if not re.fullmatch(CROP_PATTERN, value):
            raise ValueError(f"must be one of none, auto, face, body or x,y,w,h, not {value[:40]!r}")
        return value

    @model_validator(mode="after")
    def _crop_and_paste_back(self) -> "AnimationOptions":
        if "," in self.crop and any(int(side) <= 0 for side in self.crop.split(",")[2:]):
            raise ValueError("crop: a box's width and height must be positive")
        if self.paste_back and self.crop == "none":
            raise ValueError("paste_back needs a crop: auto, face, body or x,y,w,h")
        return self


def first_error(exc: Exception) -> tuple[str | None, str]:
    """(field, message) of a pydantic ValidationError's first error, for one-line answers."""
    errors = exc.errors() if hasattr(exc, "errors") else []
    if not errors:
        return None, str(exc)
    error = errors[0]
    field = ".".join(str(part) for part in error["loc"][:1]) or None
    message = error["msg"].removeprefix("Value error, ")
    return field, f"{field}: {message}" if field else message
