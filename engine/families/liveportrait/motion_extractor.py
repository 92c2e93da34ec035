"""LivePortrait's motion extractor (M): canonical keypoints, head pose, expression, scale and
translation of a face crop, from a ConvNeXt-V2 backbone."""

import torch
from torch import nn

from engine.families.liveportrait.convnextv2 import ConvNeXtV2


class MotionExtractor(nn.Module):
    """The backbone under its published name `detector`; its raw head outputs, as published:
    kp, exp (N, 3K); pitch, yaw, roll (N, num_bins) logits; t (N, 3); scale (N, 1)."""

    def __init__(
        self, num_kp: int, depths: list[int], dims: list[int], num_bins: int = 66, in_chans: int = 3
    ):
        super().__init__()
        self.detector = ConvNeXtV2(in_chans, depths, dims, num_kp, num_bins)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.detector(x)
