"""What a loaded model can do, as the workers publish it and the API checks requests against it.

A worker describes each model it loaded as a `ModelCapabilities` (its family's own words: modes,
the motion options it offers, its frame size) plus how this worker runs it (runtime, precision,
measured speed). The API names no model family: a mode or an option is valid because a loaded
model says so (`unsupported_mode`, `unsupported_option`), and the CLI checks a local model the
same way.
"""

from typing import Literal, get_args

from pydantic import BaseModel, Field

from contract.options import MOTION_OPTIONS, AnimationOptions

Runtime = Literal["torch", "openvino"]  # where a model runs
RuntimeChoice = Literal["auto", "torch", "openvino"]  # auto: the faster here, measured once per model
Precision = Literal["fp32", "bf16", "fp16", "int8"]  # int8: quantized graphs, on OpenVINO only
RUNTIMES: tuple[str, ...] = get_args(Runtime)
RUNTIME_CHOICES: tuple[str, ...] = get_args(RuntimeChoice)
PRECISIONS: tuple[str, ...] = get_args(Precision)
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # a checkpoint's file or folder name


class ModelCapabilities(BaseModel):
    """One loaded model: what it is and what a request may ask of it."""

    name: str = Field(examples=["starter"])
    family: str = Field(description="the model family, as `animate inspect` names it")
    title: str = Field("", description="the family's published name")
    frame_size: tuple[int, int] = Field(
        description="height, width the model animates at", examples=[[256, 256]]
    )
    num_kp: int = Field(description="keypoints the model detects", examples=[10])
    modes: list[str] = Field(description="the motion transfer modes it renders, the default first")
    options: list[str] = Field(
        default_factory=list,
        description="the motion options it offers (fields of POST /animate); the others keep their defaults",
    )
    background_motion: bool = Field(False, description="whether it can move the background")
    refusals: dict[str, str] = Field(
        default_factory=dict,
        description="why some options are not offered, by option (a file the model lacks)",
    )
    runtime: str | None = Field(None, examples=["torch"], description="where this worker runs it")
    precision: str | None = Field(None, examples=["fp32"], description="what this worker runs it in")
    ms_per_frame: float | None = Field(
        None, description="measured time of one frame at batch 1 (live workers measure it at start-up)"
    )


class UnsupportedChoice(ValueError):
    """A request asks a model for a mode or an option it does not offer; `field` names it."""

    def __init__(self, field: str, code: str, message: str):
        super().__init__(message)
        self.field = field
        self.code = code


NOT_OFFERED = {  # why a model refuses an option, where there is more to say than that it does not offer it
    "background_motion": "has no background motion predictor",
}


def check_options(name: str, model: ModelCapabilities, options: AnimationOptions) -> None:
    """Raise UnsupportedChoice when `options` ask model `name` for what it cannot do: a mode it does
    not render, or a motion option it does not offer set to other than its default."""
    if options.mode not in model.modes:
        message = (
            f"mode {options.mode!r} is not available with this {model.family} model {name!r} "
            f"(it renders {', '.join(model.modes)})"
        )
        raise UnsupportedChoice("mode", "unsupported_mode", message)
    defaults = AnimationOptions()
    for field in MOTION_OPTIONS:
        if field == "mode" or field in model.options:
            continue
        if getattr(options, field) != getattr(defaults, field):
            reason = model.refusals.get(field) or NOT_OFFERED.get(
                field, f"does not offer it (a {model.family} model)"
            )
            raise UnsupportedChoice(field, "unsupported_option", f"{field}: model {name!r} {reason}")
