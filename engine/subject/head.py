"""Following one head through a video by fusing three cues, each covering the others' failures.

- Feature tracking (Lucas-Kanade + RANSAC similarity) moves the head box every frame, smoothly and
  through profiles, expressions and partial occlusion, but drifts slowly.
- The Haar face detector, run in a window around the predicted box every few frames (and at once
  when the features fail), pulls the box back onto the face and re-seeds the features.
- Skin colour (a model learned from the detected face) keeps the head while neither sees it, by
  the skin blob that overlaps it, and gives the hands and limbs for body framing.

Boxes follow the Haar convention (a square from the eyebrows to the chin) in the pixels of the
frames given to `update`.
"""

from dataclasses import dataclass

import cv2
import numpy as np

from engine.subject.box import Box
from engine.subject.face import FRONTAL_ALT, FaceDetector
from engine.subject.features import FeatureTracker, Similarity
from engine.subject.skin import Blob, BlobTracker, SkinSegmenter, pick_head_and_hands, region_box


@dataclass(frozen=True)
class HeadState:
    head: Box | None  # None while no head is known
    cue: str  # what placed it this frame: "face", "features", "skin", "held" or "none"
    skin: tuple[Blob, ...] = ()  # skin blobs of this frame, ids stable across frames
    motion: Similarity | None = None  # the head's motion since the previous frame, from its features


class HeadTracker:
    def __init__(
        self,
        detector: FaceDetector | None = None,
        features: FeatureTracker | None = None,
        skin: SkinSegmenter | None = None,
        check_every: int = 5,
        search_every: int = 3,
        correction: float = 0.5,
        max_unconfirmed: int = 60,
    ):
        self.detector = detector or FaceDetector()
        self.check = FaceDetector(FRONTAL_ALT)  # confirms whole-frame detections
        self.features = features or FeatureTracker()
        self.skin = skin or SkinSegmenter()
        self.blobs = BlobTracker()
        self.check_every = check_every  # frames between detector checks while features track
        self.search_every = search_every  # frames between whole-frame searches while no head is known
        self.correction = correction  # share of the detector's box taken when it disagrees
        self.max_unconfirmed = max_unconfirmed  # frames without detector or features before giving up
        self.head: Box | None = None
        self._frame = 0
        self._unconfirmed = 0

    def update(self, frame: np.ndarray) -> HeadState:
        """Where the head is in this (H, W, 3) uint8 RGB frame, the next of the sequence."""
        index, self._frame = self._frame, self._frame + 1
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        blobs = tuple(self.blobs.update(self.skin.blobs(frame)))
        if self.head is None:
            return HeadState(self._acquire(frame, gray, index), "face" if self.head else "none", blobs)

        motion = self.features.track(gray)
        predicted = motion.apply(self.head) if motion is not None else self.head
        face = None
        if motion is None or index % self.check_every == 0:
            face = self._detect_near(gray, predicted)
        if face is not None:
            self.head = _blend(predicted, face, self.correction)
            self.skin.learn(frame, face)
            cue = "face"
        elif motion is not None:
            self.head = predicted
            cue = "features"
        else:
            head_blob, _ = pick_head_and_hands(list(blobs), near=predicted)
            region = region_box(*self.skin.grow(frame, head_blob)) if head_blob is not None else None
            if region is not None:  # the whole head's skin: its middle, across, is the face's
                self.head = Box.around(region.cx, predicted.cy, predicted.w, predicted.h)
                cue = "skin"
            else:
                cue = "held"
        self._unconfirmed = 0 if cue in ("face", "features") else self._unconfirmed + 1
        if self._unconfirmed > self.max_unconfirmed:
            self.head = None
            self.features.reset()
            return HeadState(None, "none", blobs)
        if len(self.features) < self.features.max_points // 2:
            self.features.replenish(gray, self.head)
        return HeadState(self.head, cue, blobs, motion)

    def _detect_near(self, gray: np.ndarray, expected: Box) -> Box | None:
        """The face in a window around `expected`, of a similar size. Always searched this way,
        so that the detector's grid of positions and sizes, hence its bias, stays the same."""
        face = self.detector.best(
            gray,
            near=expected,
            region=expected.grown(2.0),
            min_side=expected.w * 0.6,
            max_side=expected.w * 1.6,
        )
        if face is not None and abs(face.cx - expected.cx) + abs(face.cy - expected.cy) > expected.w:
            return None
        return face

    def _acquire(self, frame: np.ndarray, gray: np.ndarray, index: int) -> Box | None:
        """Whole-frame search, every search_every frames while no head is known; two cascades
        must agree, since nothing else yet vouches for the face."""
        self.features.previous = gray
        if index % self.search_every != 0:
            return None
        faces = self.detector.confirmed(gray, self.check, min_side=max(20.0, min(gray.shape) / 20))
        face = self._detect_near(gray, faces[0]) or faces[0] if faces else None
        if face is not None:
            self.head = face
            self._unconfirmed = 0
            self.skin.learn(frame, face)
            self.features.reset()
            self.features.replenish(gray, face)
        return face


def _blend(a: Box, b: Box, weight: float) -> Box:
    """The box `weight` of the way from a to b, in centre and size."""

    def mix(p: float, q: float) -> float:
        return p + weight * (q - p)

    return Box.around(mix(a.cx, b.cx), mix(a.cy, b.cy), mix(a.w, b.w), mix(a.h, b.h))
