"""Frontal face detection with the Haar cascades that ship with opencv-python-headless 4.x.

A cross-check and fallback for the colour and motion cues: it finds faces whatever the
background's colour, but misses profiles and occluded faces and its boxes jitter by a few percent,
so the tracker uses it to start, to correct drift and to re-acquire, not frame by frame.
"""

from pathlib import Path

import cv2
import numpy as np

from engine.subject.box import Box

FRONTAL = "haarcascade_frontalface_default.xml"
FRONTAL_ALT = "haarcascade_frontalface_alt2.xml"  # trained differently: its false alarms differ
GRID = 16  # pixels: search windows start on this grid


class FaceDetector:
    def __init__(self, cascade: str = FRONTAL, min_neighbors: int = 5, scale_factor: float = 1.1):
        path = Path(cv2.data.haarcascades) / cascade
        self.classifier = cv2.CascadeClassifier(str(path))
        if self.classifier.empty():
            raise RuntimeError(f"cannot load the Haar cascade {path}")
        self.min_neighbors = min_neighbors
        self.scale_factor = scale_factor
        self.smallest = 40  # pixels: the image is downscaled until the smallest face sought is this

    def detect(
        self,
        gray: np.ndarray,
        region: Box | None = None,
        min_side: float = 20,
        max_side: float | None = None,
    ) -> list[Box]:
        """Faces in the (H, W) uint8 image, optionally searched only inside `region`, largest first."""
        height, width = gray.shape
        x0, y0 = 0, 0
        if region is not None:  # snapped to a grid, as is the scale below: a still face stays still
            region = region.clipped(width, height)
            x0, y0 = int(region.x) // GRID * GRID, int(region.y) // GRID * GRID
            x1, y1 = (
                -(-int(np.ceil(region.right)) // GRID) * GRID,
                -(-int(np.ceil(region.bottom)) // GRID) * GRID,
            )
            gray = gray[y0:y1, x0:x1]
        # a large face needs no full-resolution search: downscale in quarter octaves
        factor = min(1.0, 2 ** (np.floor(4 * np.log2(self.smallest / min_side)) / 4))
        if factor < 1.0:
            small = (max(1, round(gray.shape[1] * factor)), max(1, round(gray.shape[0] * factor)))
            gray = cv2.resize(gray, small, interpolation=cv2.INTER_AREA)
        low = max(24, int(min_side * factor))  # 24: the cascades' window
        high = int(max_side * factor) if max_side else min(gray.shape)
        if min(gray.shape) < low or high < low:
            return []
        found = self.classifier.detectMultiScale(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(low, low),
            maxSize=(high, high),
        )
        faces = [Box(x / factor + x0, y / factor + y0, w / factor, h / factor) for x, y, w, h in found]
        return sorted(faces, key=lambda b: b.area, reverse=True)

    def confirmed(self, gray: np.ndarray, check: "FaceDetector", **kwargs) -> list[Box]:
        """Faces that the `check` detector also finds at the same place and size, largest first.

        A whole-frame search with no prior meets textures that look like a face to one cascade
        (fur, fabric, foliage); two cascades rarely agree on those.
        """
        agreed = []
        for face in self.detect(gray, **kwargs):
            seen = check.detect(gray, region=face.grown(1.6), min_side=face.w * 0.7, max_side=face.w * 1.4)
            if any(other.iou(face) > 0.4 for other in seen):
                agreed.append(face)
        return agreed

    def best(self, gray: np.ndarray, near: Box | None = None, **kwargs) -> Box | None:
        """The largest face, or with `near`, the one overlapping it most (ties: the largest)."""
        faces = self.detect(gray, **kwargs)
        if not faces:
            return None
        if near is None:
            return faces[0]
        return max(faces, key=lambda f: (f.iou(near), f.area))
