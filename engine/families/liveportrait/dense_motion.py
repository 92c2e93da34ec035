"""LivePortrait's 3-D dense motion: from source and driving keypoints to a backward deformation of
the feature volume (driving -> source) and an occlusion map."""

import torch
import torch.nn.functional as F
from torch import nn

from engine.families.liveportrait.blocks import (
    Hourglass3d,
    coordinate_grid_3d,
    gaussian_heatmaps_3d,
    sample_3d,
)

KP_VARIANCE = 0.01  # leaves no trace in the tensors; the published value


class DenseMotionNetwork(nn.Module):
    """K + 1 sparse motions (the identity, and one translation per keypoint: grid - x_d[k] + x_s[k])
    each warp a compressed copy of the volume; with the keypoints' heatmaps they feed a 3-D hourglass,
    whose softmax mask mixes the motions into one deformation and whose output, depth folded into
    channels, gives the occlusion map."""

    def __init__(
        self,
        block_expansion: int,
        num_blocks: int,
        max_features: int,
        num_kp: int,
        feature_channel: int,
        reshape_depth: int,
        compress: int,
        estimate_occlusion_map: bool = True,
    ):
        super().__init__()
        in_features = (num_kp + 1) * (compress + 1)
        self.hourglass = Hourglass3d(block_expansion, in_features, num_blocks, max_features)
        self.mask = nn.Conv3d(self.hourglass.out_filters, num_kp + 1, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(feature_channel, compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(compress)
        self.num_kp = num_kp
        self.occlusion = (
            nn.Conv2d(self.hourglass.out_filters * reshape_depth, 1, kernel_size=7, padding=3)
            if estimate_occlusion_map
            else None
        )

    def sparse_motions(
        self, spatial: tuple[int, int, int], kp_driving: torch.Tensor, kp_source: torch.Tensor
    ) -> torch.Tensor:
        """(N, K + 1, D, H, W, 3) sampling grids into the source volume: identity first."""
        n = kp_driving.shape[0]
        identity = coordinate_grid_3d(*spatial, kp_source).view(1, 1, *spatial, 3)
        per_kp = identity - kp_driving.view(n, -1, 1, 1, 1, 3) + kp_source.view(n, -1, 1, 1, 1, 3)
        return torch.cat([identity.expand(n, 1, *spatial, 3), per_kp], dim=1)

    def forward(self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> dict:
        """feature (N, C, D, H, W), keypoints (N, K, 3) -> mask (N, K + 1, D, H, W), deformation
        (N, D, H, W, 3) and, when estimated, occlusion_map (N, 1, H, W)."""
        feature = F.relu(self.norm(self.compress(feature)))  # (N, c, D, H, W)
        n, c, d, h, w = feature.shape
        k1 = self.num_kp + 1
        motions = self.sparse_motions((d, h, w), kp_driving, kp_source)
        repeated = feature.unsqueeze(1).expand(n, k1, c, d, h, w).reshape(n * k1, c, d, h, w)
        deformed = sample_3d(repeated, motions.reshape(n * k1, d, h, w, 3)).view(n, k1, c, d, h, w)

        heatmap = gaussian_heatmaps_3d(kp_driving, (d, h, w), KP_VARIANCE) - gaussian_heatmaps_3d(
            kp_source, (d, h, w), KP_VARIANCE
        )
        heatmap = torch.cat([heatmap.new_zeros(n, 1, d, h, w), heatmap], dim=1).unsqueeze(2)
        prediction = self.hourglass(torch.cat([heatmap, deformed], dim=2).view(n, -1, d, h, w))

        mask = F.softmax(self.mask(prediction), dim=1)
        deformation = (motions * mask.unsqueeze(-1)).sum(dim=1)
        out = {"mask": mask, "deformation": deformation}
        if self.occlusion is not None:
            out["occlusion_map"] = torch.sigmoid(self.occlusion(prediction.view(n, -1, h, w)))
        return out
