"""Building blocks of LivePortrait's appearance extractor and warping module (2-D and 3-D).

Attribute names (`conv`, `norm`, `conv1`, ...) follow the published state-dict keys, so the files
load as they are. Every normalisation is batch norm with its stored statistics (eps 1e-5).
"""

import torch
import torch.nn.functional as F
from torch import nn


def coordinate_grid_3d(depth: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(D, H, W, 3) grid of (x, y, z) in [-1, 1], ends included: 2 i / (n - 1) - 1 on each axis.

    This is the align_corners=True spacing, while every grid_sample on it uses align_corners=False:
    the published networks were trained with that mix, so the identity motion is not an identity warp.
    """

    def axis(n: int) -> torch.Tensor:
        return 2 * (torch.arange(n, dtype=like.dtype, device=like.device) / (n - 1)) - 1

    z, y, x = torch.meshgrid(axis(depth), axis(height), axis(width), indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def gaussian_heatmaps_3d(kp: torch.Tensor, spatial: tuple[int, int, int], variance: float) -> torch.Tensor:
    """Isotropic Gaussians around keypoints: kp (N, K, 3) -> (N, K, D, H, W)."""
    grid = coordinate_grid_3d(*spatial, kp)
    diff = grid.view(1, 1, *spatial, 3) - kp.view(*kp.shape[:2], 1, 1, 1, 3)
    return torch.exp(-0.5 * (diff**2).sum(-1) / variance)


def sample_3d(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Trilinear sampling of (N, C, D, H, W) at grid (N, d, h, w, 3), zeros outside, corners not aligned."""
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class SameBlock2d(nn.Module):
    """Convolution, batch norm, then ReLU (or LeakyReLU with slope 0.01) at constant resolution."""

    def __init__(self, in_features: int, out_features: int, leaky: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_features)
        self.slope = 0.01 if leaky else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm(self.conv(x))
        return F.leaky_relu(out, self.slope) if self.slope else F.relu(out)


class DownBlock2d(SameBlock2d):
    """SameBlock2d followed by 2x2 average pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(super().forward(x), kernel_size=2)


class ResBlock3d(nn.Module):
    """Pre-activation 3-D residual block: (batch norm, ReLU, 3^3 convolution) twice, plus the input."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv3d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv3d(features, features, kernel_size=3, padding=1)
        self.norm1 = nn.BatchNorm3d(features)
        self.norm2 = nn.BatchNorm3d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


class DownBlock3d(nn.Module):
    """3^3 convolution, batch norm, ReLU, then average pooling of height and width (not depth)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(F.relu(self.norm(self.conv(x))), kernel_size=(1, 2, 2))


class UpBlock3d(nn.Module):
    """Nearest upsampling of height and width (not depth), 3^3 convolution, batch norm, ReLU."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        return F.relu(self.norm(self.conv(out)))


def level_width(block_expansion: int, level: int, max_features: int) -> int:
    """Channels at an hourglass or encoder level: doubling from block_expansion, capped."""
    return min(max_features, block_expansion * 2**level)


class Encoder3d(nn.Module):
    """Hourglass encoder; returns the input and every level's features, finest first."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock3d(
                in_features if i == 0 else level_width(block_expansion, i, max_features),
                level_width(block_expansion, i + 1, max_features),
            )
            for i in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder3d(nn.Module):
    """Hourglass decoder with skip connections, then a 3^3 convolution, batch norm and ReLU on the
    concatenated full-resolution output (block_expansion + in_features channels)."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.up_blocks = nn.ModuleList(
            UpBlock3d(
                (1 if i == num_blocks - 1 else 2) * level_width(block_expansion, i + 1, max_features),
                level_width(block_expansion, i, max_features),
            )
            for i in reversed(range(num_blocks))
        )
        self.out_filters = block_expansion + in_features
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_filters)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = features[-1]
        for block, skip in zip(self.up_blocks, reversed(features[:-1]), strict=True):
            out = torch.cat([block(out), skip], dim=1)
        return F.relu(self.norm(self.conv(out)))


class Hourglass3d(nn.Module):
    """3-D U-Net: pools height and width num_blocks times, keeps depth."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.encoder = Encoder3d(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder3d(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
