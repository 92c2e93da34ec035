"""The options of one animation: what a client may choose, checked by the same type at every edge.

The HTTP form (service/submission.py) and the command line (worker/cli.py) both build an
`AnimationOptions`, so a value refused by one is refused by the other with the same message; the job
carries it to the worker as JSON and the worker reads it back through the same type.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, model_validator

CROP_PATTERN = r"^(none|auto|face|body|\d{1,5},\d{1,5},\d{1,5},\d{1,5})$"
Mode = Literal["relative", "absolute", "avd"]


class AnimationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = Field(
        "relative",
        description=(
            "relative: the source keeps its pose and follows the driving motion; absolute: it takes the "
            "driving pose; avd (TPSMM models with a trained AVD network): the driving motion disentangled "
            "from the driving identity. GET /models lists each model's modes"
        ),
    )
    adapt_scale: bool = Field(True, description="scale the motion by the ratio of the faces' sizes")
    driving_start: NonNegativeInt | Literal["best"] = Field(
        0, description="the driving frame matched to the source's pose: an index, or best to search"
    )
    audio: bool = Field(True, description="copy the driving video's audio into the result")
    crop: str = Field(
        "auto", pattern=CROP_PATTERN, description="framing of the subject: none, auto, face, body or x,y,w,h"
    )
    paste_back: bool = Field(False, description="paste the animated crop back into the full source image")
    background_motion: bool = Field(
        False, description="move the background too (TPSMM models with a background predictor)"
    )

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
