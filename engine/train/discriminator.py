"""Multi-scale patch discriminator for the optional adversarial loss (the published `-adv` layout).

State-dict keys follow the published checkpoints: `discs.<scale>.down_blocks.<i>.conv.weight_orig`
and so on, with the scale written like "1" or "0-5".
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from engine.layers.blocks import gaussian_heatmaps


class DiscriminatorBlock(nn.Module):
    """4x4 convolution (unpadded), optional instance norm, leaky ReLU, optional 2x average pooling."""

    def __init__(self, in_features: int, out_features: int, norm: bool, pool: bool, sn: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=4)
        if sn:
            self.conv = spectral_norm(self.conv)
        self.norm = nn.InstanceNorm2d(out_features, affine=True) if norm else None
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.norm is not None:
            out = self.norm(out)
        out = F.leaky_relu(out, 0.2)
        return F.avg_pool2d(out, 2) if self.pool else out


class Discriminator(nn.Module):
    """Patch discriminator at one scale; returns its feature maps (for feature matching) and scores."""

    def __init__(
        self,
        num_channels: int = 3,
        block_expansion: int = 64,
        num_blocks: int = 4,
        max_features: int = 512,
        sn: bool = False,
        use_kp: bool = False,
        num_kp: int = 10,
        kp_variance: float = 0.01,
        **_ignored,
    ):
        super().__init__()

        def width(level: int) -> int:
            return min(max_features, block_expansion * 2**level)

        first = num_channels + (num_kp if use_kp else 0)
        self.down_blocks = nn.ModuleList(
            DiscriminatorBlock(
                first if i == 0 else width(i), width(i + 1), norm=i != 0, pool=i != num_blocks - 1, sn=sn
            )
            for i in range(num_blocks)
        )
        self.conv = nn.Conv2d(width(num_blocks), 1, kernel_size=1)
        if sn:
            self.conv = spectral_norm(self.conv)
        self.use_kp = use_kp
        self.kp_variance = kp_variance

    def forward(
        self, x: torch.Tensor, kp: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """x (N, C, H, W); kp (N, K, 2) when the discriminator sees keypoint heatmaps."""
        out = x
        if self.use_kp:
            heatmaps = gaussian_heatmaps(kp, x.shape[2], x.shape[3], self.kp_variance)
            out = torch.cat([out, heatmaps], dim=1)
        features = []
        for block in self.down_blocks:
            out = block(out)
            features.append(out)
        return features, self.conv(out)


class MultiScaleDiscriminator(nn.Module):
    """One discriminator per image-pyramid scale."""

    def __init__(self, scales=(1,), **kwargs):
        super().__init__()
        self.scales = list(scales)
        self.discs = nn.ModuleDict({str(s).replace(".", "-"): Discriminator(**kwargs) for s in self.scales})

    def forward(
        self, pyramid: dict[float, torch.Tensor], kp: torch.Tensor | None = None
    ) -> dict[float, tuple[list[torch.Tensor], torch.Tensor]]:
        """pyramid: scale -> image; returns scale -> (feature maps, prediction map)."""
        return {s: self.discs[str(s).replace(".", "-")](pyramid[s], kp) for s in self.scales}
