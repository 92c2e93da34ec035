"""Skin-colour segmentation: threshold, clean, find blobs, pick head and hands, grow, track.

Skin of any origin forms a compact cloud in the chroma plane of YCrCb, so a box of (Cr, Cb) values
finds it under most lighting. Backgrounds of the same chroma (wood, brick, beige walls, bare
knees) pass too; once a face is known the segmenter therefore learns the subject's own skin cloud
(mean and covariance) from it and keeps only pixels close to that. The work is done on a frame
sub-sampled to about `work_side` pixels: blobs are large, and it costs well under a millisecond.
"""

from dataclasses import dataclass, field

import cv2
import numpy as np

from engine.subject.box import Box


@dataclass(frozen=True)
class SkinRegion:
    """The skin cloud as a box in the chroma plane, and the luma range where chroma is meaningful."""

    cr: tuple[int, int] = (133, 173)
    cb: tuple[int, int] = (77, 127)
    luma: tuple[int, int] = (40, 250)


@dataclass(frozen=True)
class Blob:
    box: Box  # in the pixels of the frame given to the segmenter
    area: float  # in pixels of that frame
    id: int = -1  # stable across frames once a BlobTracker has seen it


@dataclass
class _ChromaModel:
    mean: np.ndarray  # (2,) Cr, Cb
    inverse_covariance: np.ndarray  # (2, 2)


class SkinSegmenter:
    def __init__(
        self,
        region: SkinRegion = SkinRegion(),
        work_side: int = 160,
        max_distance: float = 3.0,
        grow_distance: float = 2.5,
        min_blob_fraction: float = 0.002,
    ):
        self.region = region
        self.work_side = work_side
        self.max_distance = max_distance  # Mahalanobis distance to the learned cloud to count as skin
        self.grow_distance = grow_distance  # looser distance a region may grow through
        self.min_blob_fraction = min_blob_fraction  # of the frame's area
        self.model: _ChromaModel | None = None
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))

    def _small(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        """The frame in YCrCb at work size, and the factor from frame pixels to work pixels."""
        height, width = frame.shape[:2]
        factor = min(1.0, self.work_side / max(height, width))
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA) if factor < 1 else frame
        return cv2.cvtColor(small, cv2.COLOR_RGB2YCrCb), factor

    def _generic(self, ycc: np.ndarray) -> np.ndarray:
        r = self.region
        return cv2.inRange(ycc, (r.luma[0], r.cr[0], r.cb[0]), (r.luma[1], r.cr[1], r.cb[1]))

    def _distance(self, ycc: np.ndarray, model: _ChromaModel) -> np.ndarray:
        """(h, w) Mahalanobis distance of each pixel's chroma to the learned skin cloud."""
        dr = ycc[..., 1].astype(np.float32) - model.mean[0]
        db = ycc[..., 2].astype(np.float32) - model.mean[1]
        (a, b), (_, c) = model.inverse_covariance
        return np.sqrt(a * dr * dr + 2 * b * dr * db + c * db * db)

    def learn(self, frame: np.ndarray, face: Box) -> bool:
        """Fits the skin cloud to the generic-skin pixels of the face box's centre; False if too few."""
        ycc, factor = self._small(frame)
        core = face.scaled(factor).grown(0.6).clipped(ycc.shape[1], ycc.shape[0])
        x0, y0, x1, y1 = int(core.x), int(core.y), int(np.ceil(core.right)), int(np.ceil(core.bottom))
        patch = ycc[y0:y1, x0:x1]
        chroma = patch[self._generic(patch) > 0][:, 1:].astype(np.float32)
        if len(chroma) < 20:
            return False
        covariance = np.cov(chroma.T) + np.eye(2) * 4.0  # floor: a flat-lit face is nearly one colour
        self.model = _ChromaModel(chroma.mean(axis=0), np.linalg.inv(covariance))
        return True

    def mask(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        """Cleaned skin mask (h, w) uint8 at work size, and the frame-to-work scale factor."""
        ycc, factor = self._small(frame)
        skin = self._generic(ycc)
        if self.model is not None:
            skin &= (self._distance(ycc, self.model) < self.max_distance).astype(np.uint8) * 255
        skin = cv2.morphologyEx(skin, cv2.MORPH_OPEN, self._kernel)
        skin = cv2.morphologyEx(skin, cv2.MORPH_CLOSE, self._kernel, iterations=2)
        return skin, factor

    def blobs(self, frame: np.ndarray) -> list[Blob]:
        """Connected skin regions, largest first, in frame pixels."""
        skin, factor = self.mask(frame)
        count, _, stats, _ = cv2.connectedComponentsWithStats(skin, connectivity=8)
        min_area = self.min_blob_fraction * skin.size
        found = []
        for x, y, w, h, area in stats[1:count]:
            if area >= min_area:
                box = Box(float(x), float(y), float(w), float(h)).scaled(1 / factor)
                found.append(Blob(box, float(area) / factor**2))
        return sorted(found, key=lambda b: b.area, reverse=True)

    def grow(self, frame: np.ndarray, blob: Blob, reach: float = 0.25) -> tuple[np.ndarray, float]:
        """The blob grown through neighbouring pixels of similar colour; (h, w) mask at work size.

        Growth is by colour distance to the blob's own mean colour (luma may vary more, so shading
        does not stop it) and limited to `reach` times the blob's size, so it cannot leak far into a
        background of the same colour.
        """
        ycc, factor = self._small(frame)
        height, width = ycc.shape[:2]
        seed = np.zeros((height, width), np.uint8)
        b = blob.box.scaled(factor).clipped(width, height)
        x0, y0, x1, y1 = int(b.x), int(b.y), int(np.ceil(b.right)), int(np.ceil(b.bottom))
        seed[y0:y1, x0:x1] = self.mask(frame)[0][y0:y1, x0:x1]
        if not seed.any():
            return seed, factor
        pixels = ycc[seed > 0].astype(np.float32)
        spread = pixels.std(axis=0) + np.array([8.0, 1.5, 1.5], np.float32)
        distance = np.abs(ycc.astype(np.float32) - pixels.mean(axis=0)) / spread
        limits = np.array([3.0, self.grow_distance, self.grow_distance], np.float32)
        similar = (distance < limits).all(axis=2).astype(np.uint8) * 255
        steps = max(1, round(reach * max(b.w, b.h)))
        grown = seed
        for _ in range(steps):
            wider = cv2.dilate(grown, self._kernel) & similar
            if np.array_equal(wider | seed, grown):
                break
            grown = wider | seed
        return grown, factor


def region_box(mask: np.ndarray, factor: float) -> Box | None:
    """Bounding box, in frame pixels, of a work-size mask from `grow`; None when it is empty."""
    points = cv2.findNonZero(mask)
    if points is None:
        return None
    x, y, w, h = cv2.boundingRect(points)
    return Box(float(x), float(y), float(w), float(h)).scaled(1 / factor)


def pick_head_and_hands(blobs: list[Blob], near: Box | None = None) -> tuple[Blob | None, list[Blob]]:
    """The head blob and up to two hand blobs.

    With `near` (where the head was or a face detector saw it) the head is the blob overlapping it
    most; without, the largest blob whose shape could be a head (taller than wide, at most about
    2.5 times) and among equals the highest. Hands are the next largest blobs, smaller than the head.
    """
    if not blobs:
        return None, []
    if near is not None:
        overlapping = [b for b in blobs if b.box.intersection(near) > 0]
        head = max(overlapping, key=lambda b: b.box.intersection(near)) if overlapping else None
    else:
        heads = [b for b in blobs if 0.8 <= b.box.h / max(b.box.w, 1.0) <= 2.5]
        head = max(heads, key=lambda b: (round(b.area, -1), -b.box.y)) if heads else None
    if head is None:
        return None, []
    hands = [b for b in blobs if b is not head and 0.05 * head.area <= b.area <= head.area]
    return head, hands[:2]


@dataclass
class _Track:
    blob: Blob
    missing: int = 0


@dataclass
class BlobTracker:
    """Gives blobs identities across frames by overlap with where each was last seen."""

    max_missing: int = 5
    tracks: dict[int, _Track] = field(default_factory=dict)
    _next_id: int = 0

    def update(self, blobs: list[Blob]) -> list[Blob]:
        """The blobs with their ids: a blob keeps the id of the track it overlaps most."""
        pairs = sorted(
            (
                (blob.box.iou(track.blob.box), i, tid)
                for i, blob in enumerate(blobs)
                for tid, track in self.tracks.items()
            ),
            reverse=True,
        )
        assigned: dict[int, int] = {}
        used: set[int] = set()
        for overlap, i, tid in pairs:
            if overlap <= 0.1:
                break
            if i not in assigned and tid not in used:
                assigned[i] = tid
                used.add(tid)
        out = []
        for i, blob in enumerate(blobs):
            tid = assigned.get(i)
            if tid is None:
                tid, self._next_id = self._next_id, self._next_id + 1
            out.append(Blob(blob.box, blob.area, tid))
            self.tracks[tid] = _Track(out[-1])
        for tid in list(self.tracks):
            if tid not in used and tid not in {b.id for b in out}:
                self.tracks[tid].missing += 1
                if self.tracks[tid].missing > self.max_missing:
                    del self.tracks[tid]
        return out
