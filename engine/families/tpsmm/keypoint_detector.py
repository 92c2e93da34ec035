"""TPSMM's keypoint detector: a ResNet-18 regresses 5 control points per thin-plate-spline transform."""

import torch
from torch import nn

from engine.families.tpsmm.resnet import ResNet18

POINTS_PER_TPS = 5


class KeypointDetector(nn.Module):
    """image (N, C, H, W) in [0, 1] -> {"fg_kp": (N, 5 K, 2)}, (x, y) in [-1, 1]."""

    def __init__(self, num_tps: int, num_channels: int = 3):
        super().__init__()
        self.num_tps = num_tps
        self.fg_encoder = ResNet18(num_channels, num_tps * POINTS_PER_TPS * 2)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        points = torch.sigmoid(self.fg_encoder(image)) * 2 - 1
        return {"fg_kp": points.view(image.shape[0], self.num_tps * POINTS_PER_TPS, 2)}
