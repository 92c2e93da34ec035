"""TPSMM's dense motion network: K thin-plate-spline motions and the background's, blended into one
flow by predicted contribution maps, plus occlusion masks at four resolutions."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.families.tpsmm.keypoint_detector import POINTS_PER_TPS
from engine.families.tpsmm.tps import ThinPlateSpline
from engine.layers.blocks import (
    AntiAliasDownsample,
    Hourglass,
    UpBlock2d,
    coordinate_grid,
    gaussian_heatmaps,
    instance_norm,
    warp,
)

OCCLUSION_MAPS = 4  # coarse to fine; the inpainting network's encoder levels, finest at full size


class DenseMotionNetwork(nn.Module):
    """From source and driving keypoints to a backward flow (driving -> source) and occlusion masks.

    The hourglass runs at `scale_factor` of the frame. The coarser occlusion masks come from its
    last levels; the finer ones from up blocks that bring its output back to full resolution, so
    log2(1 / scale_factor) up blocks and 4 - that many hourglass levels.
    """

    def __init__(
        self,
        block_expansion: int,
        num_blocks: int,
        max_features: int,
        num_tps: int,
        num_channels: int = 3,
        scale_factor: float = 0.25,
        kp_variance: float = 0.01,
    ):
        super().__init__()
        num_up = round(math.log2(1 / scale_factor))
        if 2.0**-num_up != scale_factor or not 0 <= num_up <= OCCLUSION_MAPS:
            raise ValueError(f"scale_factor must be 1/2^n with n <= {OCCLUSION_MAPS}, not {scale_factor}")
        if OCCLUSION_MAPS - num_up > num_blocks:
            raise ValueError(f"{num_blocks} hourglass levels cannot give {OCCLUSION_MAPS - num_up} masks")
        in_features = num_channels * (num_tps + 1) + num_tps * POINTS_PER_TPS + 1
        self.hourglass = Hourglass(block_expansion, in_features, num_blocks, max_features, norm=instance_norm)
        levels = self.hourglass.decoder.level_channels
        self.maps = nn.Conv2d(levels[-1], num_tps + 1, kernel_size=7, padding=3)
        up_widths = [levels[-1] // 2**i for i in range(num_up + 1)]
        self.up = nn.ModuleList(
            UpBlock2d(up_widths[i], up_widths[i + 1], norm=instance_norm) for i in range(num_up)
        )
        self.from_hourglass = OCCLUSION_MAPS - num_up
        mask_inputs = levels[len(levels) - self.from_hourglass :] + up_widths[1:]
        self.occlusion = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=7, padding=3) for c in mask_inputs)
        self.num_tps = num_tps
        self.scale_factor = scale_factor
        self.kp_variance = kp_variance
        if scale_factor != 1:
            self.down = AntiAliasDownsample(num_channels, scale_factor)

    def downscale(self, source_image: torch.Tensor) -> torch.Tensor:
        """The source at this network's resolution; depends on the source only, so callers cache it."""
        return self.down(source_image) if self.scale_factor != 1 else source_image

    def source_heatmap(self, kp_source: dict[str, torch.Tensor], height: int, width: int) -> torch.Tensor:
        """Gaussians around the source keypoints (N, 5K, h, w); depends on the source only."""
        return gaussian_heatmaps(kp_source["fg_kp"], height, width, self.kp_variance)

    def transformations(
        self,
        kp_driving: torch.Tensor,
        kp_source: torch.Tensor,
        height: int,
        width: int,
        bg_param: torch.Tensor | None,
    ) -> torch.Tensor:
        """(N, K+1, h, w, 2) sampling grids into the source: the background (identity, or the affine
        `bg_param` (N, 3, 3) in homogeneous coordinates), then the K thin-plate splines."""
        n = kp_driving.shape[0]
        grid = coordinate_grid(height, width, kp_driving)  # (h, w, 2)
        tps = ThinPlateSpline(
            kp_driving.view(n, self.num_tps, POINTS_PER_TPS, 2),
            kp_source.view(n, self.num_tps, POINTS_PER_TPS, 2),
        )
        splines = tps.warp_coordinates(grid.view(-1, 2)).view(n, self.num_tps, height, width, 2)
        background = grid.expand(n, 1, height, width, 2)
        if bg_param is not None:
            homogeneous = torch.cat([background, background.new_ones(n, 1, height, width, 1)], dim=-1)
            moved = (bg_param.view(n, 1, 1, 1, 3, 3) @ homogeneous.unsqueeze(-1)).squeeze(-1)
            background = moved[..., :2] / moved[..., 2:3]
        return torch.cat([background, splines], dim=1)

    def predict(
        self,
        source_small: torch.Tensor,
        kp_driving: dict[str, torch.Tensor],
        kp_source: dict[str, torch.Tensor],
        bg_param: torch.Tensor | None = None,
        source_heatmap: torch.Tensor | None = None,
    ) -> dict:
        """`forward` from the downscaled source (and, optionally, `source_heatmap`'s output), as
        callers that cache what depends on the source alone have them. Batch sizes must agree."""
        n, c, h, w = source_small.shape
        k1 = self.num_tps + 1
        if source_heatmap is None:
            source_heatmap = self.source_heatmap(kp_source, h, w)
        heatmap = gaussian_heatmaps(kp_driving["fg_kp"], h, w, self.kp_variance) - source_heatmap
        heatmap = torch.cat([heatmap.new_zeros(n, 1, h, w), heatmap], dim=1)  # (N, 5K + 1, h, w)

        transformations = self.transformations(kp_driving["fg_kp"], kp_source["fg_kp"], h, w, bg_param)
        repeated = source_small.unsqueeze(1).expand(n, k1, c, h, w).reshape(n * k1, c, h, w)
        deformed_source = warp(repeated, transformations.reshape(n * k1, h, w, 2)).view(n, k1, c, h, w)

        levels = self.hourglass.levels(torch.cat([heatmap, deformed_source.view(n, k1 * c, h, w)], dim=1))
        contribution_maps = F.softmax(self.maps(levels[-1]), dim=1)  # (N, K+1, h, w)
        deformation = (transformations * contribution_maps.unsqueeze(-1)).sum(dim=1)  # (N, h, w, 2)

        occlusion_map = [
            torch.sigmoid(conv(level))
            for conv, level in zip(self.occlusion, levels[len(levels) - self.from_hourglass :], strict=False)
        ]
        out = levels[-1]
        for block, conv in zip(self.up, self.occlusion[self.from_hourglass :], strict=True):
            out = block(out)
            occlusion_map.append(torch.sigmoid(conv(out)))
        return {
            "deformed_source": deformed_source,
            "contribution_maps": contribution_maps,
            "deformation": deformation,
            "occlusion_map": occlusion_map,
        }

    def forward(
        self,
        source_image: torch.Tensor,
        kp_driving: dict[str, torch.Tensor],
        kp_source: dict[str, torch.Tensor],
        bg_param: torch.Tensor | None = None,
    ) -> dict:
        """source_image (N, C, H, W) in [0, 1], keypoints {"fg_kp": (N, 5K, 2)} ->
        deformation (N, h, w, 2), contribution_maps (N, K+1, h, w), deformed_source
        (N, K+1, C, h, w) and occlusion_map: four (N, 1, H / 2^i, W / 2^i), coarse to fine."""
        return self.predict(self.downscale(source_image), kp_driving, kp_source, bg_param)
