"""Animation via disentanglement: driving keypoints re-expressed with the source's identity.

Two encoders (identity from the source's keypoints, pose from the driving ones) and a decoder, all
small MLPs; the published alternative to relative motion when source and driving differ in shape.
"""

import torch
from torch import nn

from engine.families.tpsmm.keypoint_detector import POINTS_PER_TPS


def _mlp(widths: list[int]) -> nn.Sequential:
    """Linear, batch norm, ReLU between consecutive widths; the last layer is linear only."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers += [nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers)


class AVDNetwork(nn.Module):
    def __init__(self, num_tps: int, id_bottle_size: int = 64, pose_bottle_size: int = 64):
        super().__init__()
        points = num_tps * POINTS_PER_TPS * 2
        self.num_tps = num_tps
        self.id_encoder = _mlp([points, 256, 512, 1024, id_bottle_size])
        self.pose_encoder = _mlp([points, 256, 512, 1024, pose_bottle_size])
        self.decoder = _mlp([pose_bottle_size + id_bottle_size, 1024, 512, 256, points])

    def forward(self, kp_source: dict[str, torch.Tensor], kp_random: dict[str, torch.Tensor]) -> dict:
        """The driving pose on the source's identity, {"fg_kp": (N, 5K, 2)}.

        kp_source and kp_random: {"fg_kp": (N, 5K, 2)} of the source and of the driving frames.
        """
        n = kp_source["fg_kp"].shape[0]
        pose = self.pose_encoder(kp_random["fg_kp"].reshape(n, -1))
        identity = self.id_encoder(kp_source["fg_kp"].reshape(n, -1))
        points = self.decoder(torch.cat([pose, identity], dim=1))
        return {"fg_kp": points.view(n, self.num_tps * POINTS_PER_TPS, 2)}
