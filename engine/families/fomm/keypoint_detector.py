"""Keypoint detector: K keypoints with their local 2x2 jacobians, learned without supervision."""

import torch
import torch.nn.functional as F
from torch import nn

from engine.layers.blocks import AntiAliasDownsample, Hourglass, coordinate_grid


def expected_coordinates(heatmap: torch.Tensor) -> torch.Tensor:
    """Mean (x, y) in [-1, 1] under each normalized heatmap: (N, K, h, w) -> (N, K, 2)."""
    grid = coordinate_grid(*heatmap.shape[2:], heatmap)  # (h, w, 2)
    return (heatmap.unsqueeze(-1) * grid).sum(dim=(2, 3))


class KeypointDetector(nn.Module):
    """Hourglass over a downscaled frame; one heatmap per keypoint, softmax over space.

    A keypoint is the expected (x, y) under its heatmap; its jacobian is the heatmap-weighted mean
    of four extra channels (one set per keypoint, or a single shared set).
    """

    def __init__(
        self,
        block_expansion: int,
        num_kp: int,
        num_channels: int,
        max_features: int,
        num_blocks: int,
        temperature: float,
        estimate_jacobian: bool = False,
        scale_factor: float = 1,
        single_jacobian_map: bool = False,
        pad: int = 0,
        kernel_size: int = 7,
    ):
        super().__init__()
        self.predictor = Hourglass(block_expansion, num_channels, num_blocks, max_features)
        self.kp = nn.Conv2d(self.predictor.out_filters, num_kp, kernel_size, padding=pad)
        self.num_jacobian_maps = 0
        if estimate_jacobian:
            self.num_jacobian_maps = 1 if single_jacobian_map else num_kp
            self.jacobian = nn.Conv2d(
                self.predictor.out_filters, 4 * self.num_jacobian_maps, kernel_size, padding=pad
            )
            nn.init.zeros_(self.jacobian.weight)
            with torch.no_grad():
                self.jacobian.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0] * self.num_jacobian_maps))
        self.temperature = temperature
        self.scale_factor = scale_factor
        if scale_factor != 1:
            self.down = AntiAliasDownsample(num_channels, scale_factor)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (N, C, H, W) in [0, 1] -> value (N, K, 2) and, if estimated, jacobian (N, K, 2, 2)."""
        if self.scale_factor != 1:
            x = self.down(x)
        features = self.predictor(x)
        logits = self.kp(features)  # (N, K, h, w)
        n, k, h, w = logits.shape
        heatmap = F.softmax(logits.view(n, k, -1) / self.temperature, dim=2).view(n, k, h, w)
        out = {"value": expected_coordinates(heatmap)}
        if self.num_jacobian_maps:
            maps = self.jacobian(features).view(n, self.num_jacobian_maps, 4, h, w)
            jacobian = (heatmap.unsqueeze(2) * maps).view(n, k, 4, -1).sum(dim=-1)
            out["jacobian"] = jacobian.view(n, k, 2, 2)
        return out
