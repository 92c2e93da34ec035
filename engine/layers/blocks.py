"""Building blocks shared by the families' 2-D networks.

Attribute names (`conv`, `norm`, `conv1`, ...) follow the published checkpoints' state-dict keys,
so the files load as they are. Some families normalise with batch norm, others with instance
norm: the blocks take the normalisation as a parameter.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Norm = Callable[[int], nn.Module]  # builds a normalisation layer for a number of channels


def exporting() -> bool:
    """Whether an exporter (ONNX, OpenVINO) is tracing: blocks then use plain, out-of-place
    operations that it converts, computing the same function."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


def instance_norm(features: int) -> nn.InstanceNorm2d:
    """Per-image normalisation with a learned scale and shift and no running statistics."""
    return nn.InstanceNorm2d(features, affine=True)


def coordinate_grid(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(H, W, 2) grid of (x, y) in [-1, 1], corners included (the align_corners=True convention)."""
    x = 2 * (torch.arange(width, dtype=like.dtype, device=like.device) / (width - 1)) - 1
    y = 2 * (torch.arange(height, dtype=like.dtype, device=like.device) / (height - 1)) - 1
    return torch.stack(torch.broadcast_tensors(x.view(1, -1), y.view(-1, 1)), dim=-1)


def warp(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample `image` (N, C, H, W) at `grid` (N, h, w, 2); trained with corners aligned."""
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def inverse_2x2(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of (..., 2, 2) matrices by the adjugate over the determinant.

    The same function as torch.inverse for 2x2 matrices, and it exports to ONNX and OpenVINO,
    which torch.inverse does not.
    """
    a, b = matrix[..., 0, 0], matrix[..., 0, 1]
    c, d = matrix[..., 1, 0], matrix[..., 1, 1]
    adjugate = torch.stack([torch.stack([d, -b], dim=-1), torch.stack([-c, a], dim=-1)], dim=-2)
    return adjugate / (a * d - b * c)[..., None, None]


def gaussian_heatmaps(kp: torch.Tensor, height: int, width: int, variance: float) -> torch.Tensor:
    """Isotropic Gaussians centred on keypoints: kp (N, K, 2) -> (N, K, H, W)."""
    grid = coordinate_grid(height, width, kp)
    diff = grid.view(1, 1, height, width, 2) - kp.view(*kp.shape[:2], 1, 1, 2)
    return torch.exp(-0.5 * (diff**2).sum(-1) / variance)


class SameBlock2d(nn.Module):
    """Convolution, normalisation, ReLU at constant resolution."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int = 3,
        padding: int = 1,
        norm: Norm = nn.BatchNorm2d,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=padding)
        self.norm = norm(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class DownBlock2d(SameBlock2d):
    """SameBlock2d followed by 2x average pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(super().forward(x), kernel_size=2)


class UpBlock2d(SameBlock2d):
    """2x nearest upsampling followed by SameBlock2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResBlock2d(nn.Module):
    """Pre-activation residual block (norm, ReLU, conv, twice)."""

    def __init__(self, features: int, kernel_size: int = 3, padding: int = 1, norm: Norm = nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(features, features, kernel_size, padding=padding)
        self.norm1 = norm(features)
        self.norm2 = norm(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


def _width(block_expansion: int, level: int, max_features: int) -> int:
    return min(max_features, block_expansion * 2**level)


class Encoder(nn.Module):
    """Hourglass encoder; returns the input and every level's features, finest first."""

    def __init__(
        self,
        block_expansion: int,
        in_features: int,
        num_blocks: int,
        max_features: int,
        norm: Norm = nn.BatchNorm2d,
    ):
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock2d(
                in_features if i == 0 else _width(block_expansion, i, max_features),
                _width(block_expansion, i + 1, max_features),
                norm=norm,
            )
            for i in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder(nn.Module):
    """Hourglass decoder with skip connections; output has block_expansion + in_features channels."""

    def __init__(
        self,
        block_expansion: int,
        in_features: int,
        num_blocks: int,
        max_features: int,
        norm: Norm = nn.BatchNorm2d,
    ):
        super().__init__()
        self.up_blocks = nn.ModuleList(
            UpBlock2d(
                (1 if i == num_blocks - 1 else 2) * _width(block_expansion, i + 1, max_features),
                _width(block_expansion, i, max_features),
                norm=norm,
            )
            for i in reversed(range(num_blocks))
        )
        self.out_filters = block_expansion + in_features
        # Channels of each level's output (up block and skip concatenated), coarsest first.
        self.level_channels = [
            2 * _width(block_expansion, i, max_features) for i in range(num_blocks - 1, 0, -1)
        ]
        self.level_channels.append(self.out_filters)

    def levels(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every level's output, coarsest first; the last one is what `forward` returns."""
        out = features[-1]
        outs = []
        for block, skip in zip(self.up_blocks, reversed(features[:-1]), strict=True):
            out = torch.cat([block(out), skip], dim=1)
            outs.append(out)
        return outs

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.levels(features)[-1]


class Hourglass(nn.Module):
    """U-Net style encoder-decoder used by the keypoint detector and the dense motion networks."""

    def __init__(
        self,
        block_expansion: int,
        in_features: int,
        num_blocks: int,
        max_features: int,
        norm: Norm = nn.BatchNorm2d,
    ):
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features, norm)
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features, norm)
        self.out_filters = self.decoder.out_filters

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The decoder's output at every level, coarsest first."""
        return self.decoder.levels(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def antialias_kernel_size(scale: float) -> int:
    sigma = (1 / scale - 1) / 2
    return 2 * round(sigma * 4) + 1


class AntiAliasDownsample(nn.Module):
    """Gaussian blur then strided subsampling by an integer factor 1/scale.

    The kernel is a buffer named `weight` because the published checkpoints store it; its values
    are what lets the loader recover the scale.
    """

    def __init__(self, channels: int, scale: float):
        super().__init__()
        sigma = (1 / scale - 1) / 2
        size = antialias_kernel_size(scale)
        self.pad_before = size // 2
        self.pad_after = self.pad_before - 1 if size % 2 == 0 else self.pad_before
        # on the CPU even when the module is built on the meta device (the loader replaces the values)
        coords = torch.arange(size, dtype=torch.float32, device="cpu") - (size - 1) / 2
        bump = torch.exp(-(coords**2) / (2 * sigma**2))
        kernel = bump.view(-1, 1) * bump.view(1, -1)
        kernel = kernel / kernel.sum()
        self.register_buffer("weight", kernel.expand(channels, 1, size, size).clone())
        self.stride = round(1 / scale)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = (self.pad_before, self.pad_after, self.pad_before, self.pad_after)
        out = F.conv2d(F.pad(x, pad), self.weight.to(x.dtype), groups=self.channels)
        return out[:, :, :: self.stride, :: self.stride]
