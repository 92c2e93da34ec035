"""Dense motion: blends K+1 sparse motions into one flow, and predicts what the source cannot show."""

import torch
import torch.nn.functional as F
from torch import nn

from engine.layers.blocks import (
    AntiAliasDownsample,
    Hourglass,
    coordinate_grid,
    gaussian_heatmaps,
    inverse_2x2,
    warp,
)


class DenseMotion(nn.Module):
    """From source and driving keypoints to a dense backward flow (driving -> source) and occlusion.

    The sparse motions are the identity (background) and, per keypoint, the first-order
    approximation T(z) = kp_S + J_S J_D^-1 (z - kp_D). An hourglass sees the source warped by each
    of them plus the keypoints' heatmap differences and predicts a softmax mask that mixes them.
    """

    def __init__(
        self,
        block_expansion: int,
        num_blocks: int,
        max_features: int,
        num_kp: int,
        num_channels: int,
        estimate_occlusion_map: bool = False,
        scale_factor: float = 1,
        kp_variance: float = 0.01,
    ):
        super().__init__()
        in_features = (num_kp + 1) * (num_channels + 1)
        self.hourglass = Hourglass(block_expansion, in_features, num_blocks, max_features)
        self.mask = nn.Conv2d(self.hourglass.out_filters, num_kp + 1, kernel_size=7, padding=3)
        self.occlusion = None
        if estimate_occlusion_map:
            self.occlusion = nn.Conv2d(self.hourglass.out_filters, 1, kernel_size=7, padding=3)
        self.num_kp = num_kp
        self.scale_factor = scale_factor
        self.kp_variance = kp_variance
        if scale_factor != 1:
            self.down = AntiAliasDownsample(num_channels, scale_factor)

    def downscale(self, source: torch.Tensor) -> torch.Tensor:
        """The source at this network's resolution; depends on the source only, so callers cache it."""
        return self.down(source) if self.scale_factor != 1 else source

    def sparse_motions(
        self,
        kp_driving: dict[str, torch.Tensor],
        kp_source: dict[str, torch.Tensor],
        h: int,
        w: int,
    ) -> torch.Tensor:
        """(N, K+1, h, w, 2) sampling grids into the source, background first."""
        n = kp_driving["value"].shape[0]
        identity = coordinate_grid(h, w, kp_driving["value"]).view(1, 1, h, w, 2)
        offset = identity - kp_driving["value"].view(n, self.num_kp, 1, 1, 2)
        if "jacobian" in kp_driving:
            jacobian = kp_source["jacobian"] @ inverse_2x2(kp_driving["jacobian"])  # (N, K, 2, 2)
            offset = torch.einsum("nkij,nkhwj->nkhwi", jacobian, offset)
        to_source = offset + kp_source["value"].view(n, self.num_kp, 1, 1, 2)
        return torch.cat([identity.expand(n, 1, h, w, 2), to_source], dim=1)

    def forward(
        self,
        source_small: torch.Tensor,
        kp_driving: dict[str, torch.Tensor],
        kp_source: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """source_small (N, C, h, w): `downscale(source)`, which callers compute once per source."""
        n, c, h, w = source_small.shape
        k1 = self.num_kp + 1

        heatmaps = gaussian_heatmaps(kp_driving["value"], h, w, self.kp_variance) - gaussian_heatmaps(
            kp_source["value"], h, w, self.kp_variance
        )
        heatmaps = torch.cat([heatmaps.new_zeros(n, 1, h, w), heatmaps], dim=1).unsqueeze(2)

        motions = self.sparse_motions(kp_driving, kp_source, h, w)  # (N, K+1, h, w, 2)
        repeated = source_small.unsqueeze(1).expand(n, k1, c, h, w).reshape(n * k1, c, h, w)
        sparse_deformed = warp(repeated, motions.reshape(n * k1, h, w, 2)).view(n, k1, c, h, w)

        features = torch.cat([heatmaps, sparse_deformed], dim=2).view(n, -1, h, w)
        # channels-last, the convolutions' layout: else each reader of it or its skip copies converts it
        features = features.contiguous(memory_format=torch.channels_last)
        prediction = self.hourglass(features)
        mask = F.softmax(self.mask(prediction), dim=1)  # (N, K+1, h, w)
        deformation = (motions * mask.unsqueeze(-1)).sum(dim=1)  # (N, h, w, 2)

        out = {"sparse_deformed": sparse_deformed, "mask": mask, "deformation": deformation}
        if self.occlusion is not None:
            out["occlusion_map"] = torch.sigmoid(self.occlusion(prediction))
        return out
