"""Auto-crop: the square to cut from each frame so the subject sits as in the models' training data.

Face framing copies the published face crops: measured with our Haar detector on the published
clips (d0-d20), the face box is 0.47-0.68 of the crop's side (median 0.58) and its centre sits at
0.53 of the height. Body framing (a person standing in the frame: the face is under 12% of the
frame's height) puts a square around the whole person. A frame whose subject already fills it
like a training crop keeps its whole short side, so clips and images that are already cropped are
left as they are.

Analysis runs on frames scaled to about ANALYSIS_SIDE pixels; boxes are in full-frame pixels.
"""

from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from engine.media.video_io import VideoInfo, read_frames
from engine.subject.body import person_box
from engine.subject.box import Box, fit_square
from engine.subject.face import FRONTAL_ALT, FaceDetector
from engine.subject.head import HeadTracker
from engine.subject.skin import SkinSegmenter
from engine.subject.smoothing import steady_camera

Kind = Literal["auto", "face", "body"]
KINDS = ("auto", "face", "body")

FACE_FILL = 0.58  # face box side / crop side
FACE_HEIGHT = 0.53  # face centre's position down the crop, as a share of its side
BODY_MARGIN = 1.08  # crop side / the person's larger extent
BODY_FACE_SHARE = 0.12  # below this face-to-frame-height ratio the shot is a full-body shot
WHOLE_FROM, WHOLE_AT = 0.65, 0.78  # face crops from WHOLE_FROM of the short side grow to all of it
SQUARISH = 1.15  # frames at most this much longer than wide (or the reverse) may be crops already
ANALYSIS_SIDE = 480


@dataclass(frozen=True)
class CropPlan:
    """One square box per frame, (T, 4) float x, y, side, side in the frame's pixels."""

    kind: Literal["face", "body", "none"]  # none: no subject found, the frames' centre squares
    boxes: np.ndarray
    width: int
    height: int

    @property
    def whole_frame(self) -> bool:
        """True when every box is the whole (square) frame: cropping would change nothing."""
        full = np.array([0, 0, self.width, self.height], np.float64)
        return bool(np.all(np.abs(self.boxes - full) < 0.5))

    def box(self, index: int) -> Box:
        """The box of frame `index`; past the end (a decoder that finds one more frame), the last."""
        x, y, w, h = self.boxes[min(index, len(self.boxes) - 1)]
        return Box(float(x), float(y), float(w), float(h))


def choose_kind(kind: Kind, face_side: float | None, frame_height: int) -> Literal["face", "body"]:
    if kind != "auto":
        return kind
    if face_side is not None and face_side < BODY_FACE_SHARE * frame_height:
        return "body"
    return "face"


def face_square(face: Box) -> tuple[float, float, float]:
    """Centre x, centre y and side of the training-like crop around a face box."""
    side = face.w / FACE_FILL
    return face.cx, face.cy + (0.5 - FACE_HEIGHT) * side, side


def body_square(person: Box) -> tuple[float, float, float]:
    return person.cx, person.cy, max(person.w, person.h) * BODY_MARGIN


def place_square(cx: float, cy: float, side: float, width: int, height: int, kind: str) -> Box:
    """The square fitted into the frame: face crops stay inside it, body crops may be padded.

    In a squarish frame, a face crop nearly as large as the frame becomes all of it, through a
    linear ramp so that a face coming closer never makes the crop jump.
    """
    if kind == "body":
        return fit_square(cx, cy, side, width, height, pad=True)
    short = min(width, height)
    if max(width, height) > SQUARISH * short:
        return fit_square(cx, cy, side, width, height)
    low, high = WHOLE_FROM * short, WHOLE_AT * short
    if side >= high:
        side = short
    elif side > low:
        side = low + (side - low) * (short - low) / (high - low)
    return fit_square(cx, cy, side, width, height)


def centre_square(width: int, height: int) -> Box:
    return fit_square(width / 2, height / 2, min(width, height), width, height)


def analysis_size(width: int, height: int) -> tuple[int, int]:
    """(w, h) to analyse a width x height frame at: its long side at most ANALYSIS_SIDE."""
    scale = min(1.0, ANALYSIS_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _largest_face(image: np.ndarray) -> Box | None:
    """The largest face both cascades agree on in an (h, w, 3) uint8 image at analysis size."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    smallest = max(20.0, min(gray.shape) / 20)
    faces = FaceDetector().confirmed(gray, FaceDetector(FRONTAL_ALT), min_side=smallest)
    return faces[0] if faces else None


def image_face(image: np.ndarray) -> Box | None:
    """The largest face in an (H, W, 3) uint8 image, in its pixels, as image_crop finds it."""
    height, width = image.shape[:2]
    size = analysis_size(width, height)
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if size != (width, height) else image
    face = _largest_face(small)
    return None if face is None else face.scaled(width / size[0], height / size[1])


def image_crop(image: np.ndarray, kind: Kind = "auto") -> tuple[Literal["face", "body", "none"], Box]:
    """The crop for a single image ((H, W, 3) uint8) and the framing chosen.

    With no face found the crop is the image's centre square ("none"); for a square image that is
    the whole image.
    """
    height, width = image.shape[:2]
    size = analysis_size(width, height)
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if size != (width, height) else image
    fx, fy = width / size[0], height / size[1]
    face = _largest_face(small)
    if face is None:
        return "none", centre_square(width, height)
    chosen = choose_kind(kind, face.h * fy, height)
    if chosen == "face":
        square = face_square(face.scaled(fx, fy))
    else:
        skin = SkinSegmenter()
        skin.learn(small, face)
        person = person_box(face, skin.blobs(small), size[0], size[1]).scaled(fx, fy)
        square = body_square(person)
    return chosen, place_square(*square, width, height, chosen)


def follow_subject(
    frames: Iterable[np.ndarray],
    fps: float,
    frame_size: tuple[int, int],
    kind: Kind = "auto",
    every: Callable[[int], None] | None = None,
) -> CropPlan:
    """One square box per frame, following the subject; boxes in pixels of the width x height
    `frame_size`, whatever size the (h, w, 3) uint8 `frames` are given at (analysis_size is enough).

    Memory holds a few numbers per frame, never the frames. `every(index)` is called per frame
    (to report progress or raise to cancel).
    """
    width, height = frame_size
    faces, people = array("d"), array("d")  # per frame cx, cy, side and x, y, w, h; NaN: unseen
    tracker = HeadTracker()
    for index, frame in enumerate(frames):
        if every is not None:
            every(index)
        fx, fy = width / frame.shape[1], height / frame.shape[0]
        state = tracker.update(frame)
        if state.head is None:
            faces.extend((np.nan,) * 3)
            people.extend((np.nan,) * 4)
            continue
        head = state.head.scaled(fx, fy)
        faces.extend((head.cx, head.cy, head.w))
        person = person_box(state.head, state.skin, frame.shape[1], frame.shape[0]).scaled(fx, fy)
        people.extend((person.x, person.y, person.w, person.h))
    face_track = np.frombuffer(faces, np.float64).reshape(-1, 3)
    if np.isnan(face_track).all():
        whole = centre_square(width, height)
        boxes = np.tile([whole.x, whole.y, whole.w, whole.h], (len(face_track), 1))
        return CropPlan("none", boxes.reshape(-1, 4), width, height)

    chosen = choose_kind(kind, float(np.nanmedian(face_track[:, 2])), height)
    if chosen == "face":
        wanted = [face_square(Box.around(cx, cy, s)) for cx, cy, s in face_track]
    else:
        wanted = [body_square(Box(*p)) for p in np.frombuffer(people, np.float64).reshape(-1, 4)]
    path = steady_camera(np.array(wanted, np.float64), fps)
    boxes = [place_square(cx, cy, side, width, height, chosen) for cx, cy, side in path]
    return CropPlan(chosen, np.array([[b.x, b.y, b.w, b.h] for b in boxes]), width, height)


def video_crop(
    path: str | Path, info: VideoInfo, kind: Kind = "auto", every: Callable[[int], None] | None = None
) -> CropPlan:
    """follow_subject over the video at `path`, decoded by ffmpeg straight at the analysis size."""
    w, h = analysis_size(info.width, info.height)
    return follow_subject(read_frames(path, h, w, info), info.fps, (info.width, info.height), kind, every)
