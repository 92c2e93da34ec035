"""Background motion: one affine transform between source and driving frame, from a ResNet-18."""

import torch
import torch.nn.functional as F
from torch import nn

from engine.families.tpsmm.resnet import ResNet18


class BackgroundMotionPredictor(nn.Module):
    """The ResNet sees source and driving stacked (6 channels) and regresses the top two rows of a
    3x3 homogeneous matrix that maps driving coordinates to source coordinates.

    Its first convolution is linear in each half of the input, so the source's half can be computed
    once per job (`encode_source`) and added to each driving frame's half (`predict`).
    """

    def __init__(self, num_channels: int = 3):
        super().__init__()
        self.bg_encoder = ResNet18(2 * num_channels, 6)
        self.num_channels = num_channels

    def _first_conv(self, image: torch.Tensor, half: int, bias: bool) -> torch.Tensor:
        conv = self.bg_encoder.conv1
        c = self.num_channels
        weight = conv.weight[:, half * c : (half + 1) * c]
        return F.conv2d(image, weight, conv.bias if bias else None, conv.stride, conv.padding)

    def encode_source(self, source_image: torch.Tensor) -> torch.Tensor:
        """The source's contribution to the first convolution (with its bias, if it has one)."""
        return self._first_conv(source_image, 0, bias=True)

    def predict(self, source_encoded: torch.Tensor, driving_image: torch.Tensor) -> torch.Tensor:
        """(N, 3, 3) matrices from `encode_source`'s output and driving frames (N, C, H, W)."""
        features = source_encoded + self._first_conv(driving_image, 1, bias=False)
        return self._as_matrix(self.bg_encoder.after_conv1(features))

    @staticmethod
    def _as_matrix(rows: torch.Tensor) -> torch.Tensor:
        n = rows.shape[0]
        bottom = torch.tensor([0.0, 0.0, 1.0], dtype=rows.dtype, device=rows.device).expand(n, 1, 3)
        return torch.cat([rows.view(n, 2, 3), bottom], dim=1)

    def forward(self, source_image: torch.Tensor, driving_image: torch.Tensor) -> torch.Tensor:
        """source and driving (N, C, H, W) in [0, 1] -> bg_param (N, 3, 3)."""
        return self._as_matrix(self.bg_encoder(torch.cat([source_image, driving_image], dim=1)))
