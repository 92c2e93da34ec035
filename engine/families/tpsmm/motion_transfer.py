"""TPSMM's relative motion: the published demo always adapts the movement's scale."""

import torch

from engine.layers.geometry import hull_scale


def relative_kp(
    kp_source: dict[str, torch.Tensor],
    kp_driving: dict[str, torch.Tensor],
    kp_driving_initial: dict[str, torch.Tensor],
    adapt_scale: bool = True,
) -> dict[str, torch.Tensor]:
    """The source's keypoints moved by the driving keypoints' displacement since the initial frame.

    The displacement is scaled by sqrt(source hull area / initial driving hull area), as published
    (`adapt_scale=False`, 1, is ours). kp_source and kp_driving_initial: (1 or N, 5K, 2).
    """
    scale = hull_scale(kp_source["fg_kp"][0], kp_driving_initial["fg_kp"][0]) if adapt_scale else 1.0
    moved = (kp_driving["fg_kp"] - kp_driving_initial["fg_kp"]) * scale + kp_source["fg_kp"]
    return {**kp_driving, "fg_kp": moved}
