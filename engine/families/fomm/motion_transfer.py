"""Motion transfer: how driving keypoints are mapped onto the source before rendering."""

import torch

from engine.layers.blocks import inverse_2x2
from engine.layers.geometry import hull_scale


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
