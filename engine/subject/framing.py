"""How a render frames its inputs: the `crop` and `paste_back` render options.

crop:
- "auto" (the default): crop the source image around its subject and follow the subject through
  the driving video, one square per frame. Faces are framed like the published face crops; a
  full-body shot (the source's face under 12% of its height) gets a square around the whole person,
  and the driving video is framed the same way as the source. Inputs that are already cropped like
  that (a squarish frame the face fills by about half) are used whole, exactly as with "none"; a
  frame with no face found is used as its centre square.
- "face" / "body": the same with the framing forced.
- "none": both inputs are resized whole to the model's square, as they come.
- "x,y,w,h": the source image is cut at that box (integer source pixels, inside the image); the
  driving video is cropped as with "auto".

The render's result says which framing was chosen and why (FramingReport: the CLI's summary line,
the job's `result.framing`), with a warning when no face was found in the photo: the model then
animates the picture as it is, and its background moves with the driving motion.

paste_back (default off): the rendered square is composited back into the full source image, so
the video has the source's size (trimmed to even sides for H.264) and background: the photo's own
pixels wherever the animation leaves them unchanged, its detail moved along where the animation
moves them, and no border (engine/subject/paste.py). Off by default because the video is then as
large as the photo. It needs a crop, and `size` does not apply to it.
"""

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from contract.render import FramingReport
from engine.errors import RenderCanceled, RenderError
from engine.media.video_io import VideoInfo, read_frames, resize_image
from engine.subject.autocrop import KINDS, CropPlan, Kind, image_crop, video_crop
from engine.subject.box import Box, parse_box
from engine.subject.cutout import cut_out
from engine.subject.paste import ModelFrame, Paster

CROPS = ("auto", "none", *KINDS[1:])
DEFAULT_CROP = "auto"


def parse_crop(value: str) -> str | Box:
    """The crop option parsed: one of CROPS, or a Box; ValueError with a message for the user."""
    if not isinstance(value, str):
        raise ValueError(f"crop must be one of {', '.join(CROPS)} or x,y,w,h, not {value!r}")
    if value in CROPS:
        return value
    if "," in value:
        return parse_box(value)
    raise ValueError(f"crop must be one of {', '.join(CROPS)} or x,y,w,h, not {value!r}")


class Framing:
    """The model-sized inputs of one render and, with paste-back, its full-size output frames."""

    def __init__(
        self,
        source: np.ndarray,
        source_box: Box | None,
        driving_path: Path,
        info: VideoInfo,
        driving_plan: CropPlan | None,
        paste_back: bool,
        report: FramingReport,
    ):
        self.source = source  # (H, W, 3) uint8, trimmed to even sides when pasting back
        self.source_box = source_box  # None: the whole source, resized as it is
        self.driving_path = driving_path
        self.info = info
        self.driving_plan = driving_plan  # None or whole_frame: the whole frames, resized
        self.pastes = paste_back
        self.report = report  # what was chosen and why, for the render's result
        self.paster: Paster | None = None  # made by prepare_paste

    def prepare_paste(self, still: ModelFrame) -> None:
        """Readies paste-back with the model's rendering of the source with no motion."""
        height, width = self.source.shape[:2]
        self.paster = Paster(self.source, self.source_box or Box(0, 0, width, height), still)

    def source_input(self, height: int, width: int) -> np.ndarray:
        """The source as the model takes it, (height, width, 3) uint8."""
        if self.source_box is None:
            return resize_image(self.source, height, width)
        return cut_out(self.source, self.source_box, width, height)

    def driving_frames(self, height: int, width: int, step: int = 1) -> Iterator[np.ndarray]:
        """Every `step`-th driving frame as the model takes it, (height, width, 3) uint8 each."""
        plan = self.driving_plan
        if plan is None or plan.whole_frame:
            yield from itertools.islice(read_frames(self.driving_path, height, width), 0, None, step)
            return
        frames = read_frames(self.driving_path, self.info.height, self.info.width)
        for index, frame in enumerate(frames):
            if index % step == 0:
                yield cut_out(frame, plan.box(index), width, height)

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the output frames for a model rendering width x height."""
        if not self.pastes:
            return width, height
        return self.source.shape[1], self.source.shape[0]

    def finish(self, rendered: np.ndarray | list[ModelFrame]) -> np.ndarray:
        """Rendered frames ((N, h, w, 3) uint8; with paste-back, ModelFrames) -> the frames to encode."""
        if not self.pastes:
            return rendered
        if self.paster is None:
            raise RuntimeError("paste-back needs prepare_paste(still) before the first frame")
        return np.stack([self.paster(frame) for frame in rendered])


def _photo_framing(spec: str | Box, found: str, whole: bool) -> tuple[str, bool | None, str]:
    """The photo's framing (FramingReport.source), whether a face was found in it, and why."""
    if spec == "none":
        return "whole", None, "crop none: the whole photo"
    if isinstance(spec, Box):
        return "box", None, "the photo cut at the crop box asked for"
    asked = "" if spec == "auto" else f"crop {spec}: "
    if found == "none":
        framing, part = ("whole", "whole picture") if whole else ("centre", "picture's centre square")
        return framing, False, f"{asked}no face found in the photo: the {part} is animated"
    if whole:
        return "whole", True, f"{asked}the photo is framed like the model's training crops: used whole"
    if found == "body" and spec == "auto":
        return "body", True, "a small face (under 12% of the photo's height): a square around the person"
    subject = "the face, as the model's training crops" if found == "face" else "the whole person"
    return found, True, f"{asked}a face found in the photo: a square around {subject}"


def _driving_framing(plan: CropPlan | None) -> tuple[str, str]:
    """The driving video's framing (FramingReport.driving) and why."""
    if plan is None:
        return "whole", "the whole driving frames"
    if plan.kind == "none":
        part = "whole frames" if plan.whole_frame else "frames' centre squares"
        return ("whole" if plan.whole_frame else "centre"), f"no face found in the driving video: its {part}"
    if plan.whole_frame:
        return "whole", "the driving video is framed like the model's training crops already: used whole"
    subject = "face" if plan.kind == "face" else "whole person"
    return plan.kind, f"the driving video: a square following its {subject}"


def framing_report(spec: str | Box, found: str, whole: bool, plan: CropPlan | None) -> FramingReport:
    """What a render's framing is and why: `found` is image_crop's kind for the photo ("none": no
    face), `whole` whether the photo is used whole, `plan` the driving video's (None: crop none)."""
    source, subject_found, photo_reason = _photo_framing(spec, found, whole)
    driving, driving_reason = _driving_framing(plan)
    warning = None
    if subject_found is False:
        warning = f"{photo_reason}, background included, so the background moves with the driving motion"
    return FramingReport(
        source=source,
        driving=driving,
        subject_found=subject_found,
        reason=f"{photo_reason}; {driving_reason}",
        warning=warning,
    )


def plan_framing(
    source: np.ndarray,
    driving_path: str | Path,
    info: VideoInfo,
    crop: str = DEFAULT_CROP,
    paste_back: bool = False,
    should_cancel: Callable[[], bool] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Framing:
    """Finds the crops for a render; runs one analysis pass over the driving video unless "none".

    on_progress(frames analysed, frames expected) follows that pass. RenderError (invalid_option)
    for a crop box outside the source, RenderCanceled when should_cancel() says so.
    """
    spec = parse_crop(crop)
    driving_path = Path(driving_path)
    height, width = source.shape[:2]
    if isinstance(spec, Box) and (spec.x < 0 or spec.y < 0 or spec.right > width or spec.bottom > height):
        message = f"crop box {crop} is not inside the {width}x{height} source image"
        raise RenderError(message, "invalid_option")
    if paste_back:
        height, width = height - height % 2, width - width % 2
        source = source[:height, :width]
    if spec == "none":
        report = framing_report(spec, "none", True, None)
        return Framing(source, None, driving_path, info, None, paste_back, report)
    found = "none"
    if isinstance(spec, Box):
        source_box: Box | None = spec
        kind: Kind = "auto"
    else:
        found, source_box = image_crop(source, spec)
        kind = found if found != "none" else spec  # the source's framing decides the video's
        if source_box.rounded() == (0, 0, width, height):
            source_box = None

    def every(index: int) -> None:
        if on_progress is not None:
            on_progress(index + 1, max(info.frames, index + 1))
        if should_cancel is not None and index % 16 == 0 and should_cancel():
            raise RenderCanceled("the job was canceled")

    plan = video_crop(driving_path, info, kind, every)
    report = framing_report(spec, found, source_box is None, plan)
    return Framing(source, source_box, driving_path, info, plan, paste_back, report)
