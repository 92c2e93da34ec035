"""Facial feature tracking: Shi-Tomasi corners in the head box followed by pyramidal Lucas-Kanade.

Each tracked point must pass two dissimilarity checks: tracked back from the new frame it lands
where it started (forward-backward error), and the patch around it still looks the same (normalised
cross-correlation). Points that fail (occlusion, leaving the head, a change of perspective) are
dropped; the survivors give the head's motion as a similarity (translation, scale, in-plane
rotation) fitted with RANSAC, which also drops the points that move unlike the head.
"""

import math
from dataclasses import dataclass

import cv2
import numpy as np

from engine.subject.box import Box


@dataclass(frozen=True)
class Similarity:
    """x' = scale * R(angle) @ x + (tx, ty), from the previous frame to the current one."""

    matrix: np.ndarray  # (2, 3)
    inliers: int

    @property
    def scale(self) -> float:
        return float(math.hypot(self.matrix[0, 0], self.matrix[1, 0]))

    @property
    def angle(self) -> float:
        """In-plane rotation in degrees."""
        return float(math.degrees(math.atan2(self.matrix[1, 0], self.matrix[0, 0])))

    @property
    def translation(self) -> tuple[float, float]:
        return float(self.matrix[0, 2]), float(self.matrix[1, 2])

    def apply(self, box: Box) -> Box:
        """The box moved with its centre and resized by the scale (an upright box ignores rotation)."""
        cx, cy = self.matrix @ np.array([box.cx, box.cy, 1.0])
        return Box.around(float(cx), float(cy), box.w * self.scale, box.h * self.scale)


class FeatureTracker:
    def __init__(
        self,
        max_points: int = 80,
        min_points: int = 10,
        window: int = 15,
        levels: int = 3,
        max_fb_error: float = 1.0,
        min_correlation: float = 0.8,
        patch: int = 9,
    ):
        self.max_points = max_points
        self.min_points = min_points
        self.lk = {
            "winSize": (window, window),
            "maxLevel": levels,
            "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03),
        }
        self.max_fb_error = max_fb_error
        self.min_correlation = min_correlation
        self.patch = patch
        self.points = np.empty((0, 2), np.float32)  # (N, 2) x, y in the last frame
        self.previous: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.points)

    def reset(self) -> None:
        self.points = np.empty((0, 2), np.float32)

    def replenish(self, gray: np.ndarray, box: Box) -> int:
        """Adds corners inside `box` (away from the points kept) up to max_points; returns the count."""
        self.previous = gray
        missing = self.max_points - len(self.points)
        if missing < self.max_points // 4:
            return len(self.points)
        height, width = gray.shape
        inner = box.grown(0.8).clipped(width, height)
        if inner.w < 8 or inner.h < 8:
            return len(self.points)
        mask = np.zeros_like(gray)
        x0, y0 = int(inner.x), int(inner.y)
        mask[y0 : int(inner.bottom), x0 : int(inner.right)] = 255
        spacing = max(3, int(inner.w / 20))
        for x, y in self.points:
            cv2.circle(mask, (int(x), int(y)), spacing, 0, -1)
        found = cv2.goodFeaturesToTrack(
            gray, maxCorners=missing, qualityLevel=0.01, minDistance=spacing, mask=mask, blockSize=5
        )
        if found is not None:
            self.points = np.concatenate([self.points, found.reshape(-1, 2).astype(np.float32)])
        return len(self.points)

    def track(self, gray: np.ndarray) -> Similarity | None:
        """Follows the points into `gray`; the head's motion, or None when too few points survive."""
        previous, self.previous = self.previous, gray
        if previous is None or len(self.points) < self.min_points:
            self.reset()
            return None
        start = self.points.reshape(-1, 1, 2)
        moved, found, _ = cv2.calcOpticalFlowPyrLK(previous, gray, start, None, **self.lk)
        back, found_back, _ = cv2.calcOpticalFlowPyrLK(gray, previous, moved, None, **self.lk)
        start, moved, back = start.reshape(-1, 2), moved.reshape(-1, 2), back.reshape(-1, 2)
        keep = (found.ravel() == 1) & (found_back.ravel() == 1)
        keep &= np.linalg.norm(start - back, axis=1) < self.max_fb_error
        keep[keep] = self._correlations(previous, gray, start[keep], moved[keep]) > self.min_correlation
        start, moved = start[keep], moved[keep]
        if len(moved) < self.min_points:
            self.points = moved
            return None
        matrix, inliers = cv2.estimateAffinePartial2D(
            start, moved, method=cv2.RANSAC, ransacReprojThreshold=1.5, maxIters=500, confidence=0.99
        )
        if matrix is None:
            self.points = moved
            return None
        inliers = inliers.ravel() == 1
        self.points = moved[inliers]
        if inliers.sum() < self.min_points:
            return None
        return Similarity(matrix, int(inliers.sum()))

    def _correlations(self, before: np.ndarray, after: np.ndarray, p0: np.ndarray, p1: np.ndarray):
        """Normalised cross-correlation of the patches around each point pair, (N,) in [-1, 1]."""
        if len(p0) == 0:
            return np.empty(0, np.float32)
        size = (self.patch, self.patch)
        pa = np.array([cv2.getRectSubPix(before, size, (float(x), float(y))) for x, y in p0], np.float32)
        pb = np.array([cv2.getRectSubPix(after, size, (float(x), float(y))) for x, y in p1], np.float32)
        pa = pa.reshape(len(p0), -1)
        pb = pb.reshape(len(p1), -1)
        pa -= pa.mean(axis=1, keepdims=True)
        pb -= pb.mean(axis=1, keepdims=True)
        norms = np.sqrt((pa * pa).sum(axis=1) * (pb * pb).sum(axis=1))
        return np.where(norms > 1e-6, (pa * pb).sum(axis=1) / np.maximum(norms, 1e-6), 0.0)
