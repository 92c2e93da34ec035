"""Motion transfer: how driving keypoints are mapped onto the source before rendering."""

import numpy as np
import torch

from worker.models.blocks import inverse_2x2


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


def relative_motion(
    kp_source: dict[str, torch.Tensor],
    kp_driving: dict[str, torch.Tensor],
    kp_driving_initial: dict[str, torch.Tensor],
    scale: float | torch.Tensor = 1.0,
    relative_jacobian: bool = True,
) -> dict[str, torch.Tensor]:
    """The source's keypoints moved by the driving displacement since the initial frame, times `scale`.

    Jacobians (when asked and present) become J_D J_D0^-1 J_S. Tensors only, so the per-frame
    graphs that are exported compute it too; `scale` may be a (1,) tensor.
    """
    kp_new = dict(kp_driving)
    kp_new["value"] = (kp_driving["value"] - kp_driving_initial["value"]) * scale + kp_source["value"]
    if relative_jacobian and "jacobian" in kp_driving:
        change = kp_driving["jacobian"] @ inverse_2x2(kp_driving_initial["jacobian"])
        kp_new["jacobian"] = change @ kp_source["jacobian"]
    return kp_new


def movement_scale(kp_source: dict[str, torch.Tensor], kp_driving_initial: dict[str, torch.Tensor]) -> float:
    """sqrt(source hull area / initial driving hull area): a small face driven by a big one moves less."""
    return hull_scale(kp_source["value"][0], kp_driving_initial["value"][0])


def normalize_kp(
    kp_source: dict[str, torch.Tensor],
    kp_driving: dict[str, torch.Tensor],
    kp_driving_initial: dict[str, torch.Tensor],
    adapt_movement_scale: bool = False,
    use_relative_movement: bool = False,
    use_relative_jacobian: bool = False,
) -> dict[str, torch.Tensor]:
    """Driving keypoints as the generator should see them.

    Relative: `relative_motion`, scaled by `movement_scale` when adapting. Otherwise the driving
    keypoints as they are.
    """
    if not use_relative_movement:
        return dict(kp_driving)
    scale = movement_scale(kp_source, kp_driving_initial) if adapt_movement_scale else 1.0
    return relative_motion(kp_source, kp_driving, kp_driving_initial, scale, use_relative_jacobian)
