"""Keypoint geometry shared by the families: hull areas, the scale between two faces, and
arrangements compared to pick the driving frame nearest the source's pose."""

import numpy as np
import torch


def convex_hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of (K, 2) points (Andrew's monotone chain, shoelace formula)."""
    pts = sorted(map(tuple, points.tolist()))
    if len(pts) < 3:
        return 0.0

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    upper: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = np.array(lower[:-1] + upper[:-1])
    x, y = hull[:, 0], hull[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def hull_scale(source_points: torch.Tensor, driving_points: torch.Tensor) -> float:
    """sqrt(source hull area / driving hull area) of (K, 2) points; 1 when the driving hull is flat."""
    source_area = convex_hull_area(source_points.detach().cpu().double().numpy())
    driving_area = convex_hull_area(driving_points.detach().cpu().double().numpy())
    if driving_area <= 0:
        return 1.0
    return float(np.sqrt(source_area) / np.sqrt(driving_area))


def normalized_arrangement(points: torch.Tensor) -> torch.Tensor:
    """(N, K, 2) points -> (N, 2K): each frame's points centred and scaled by their hull area, so only
    their arrangement is compared."""
    rows = []
    for kp in points.detach().cpu().numpy():
        centred = kp - kp.mean(axis=0)
        area = convex_hull_area(kp)
        rows.append((centred / np.sqrt(area) if area > 0 else centred).reshape(-1))
    return torch.from_numpy(np.stack(rows))
