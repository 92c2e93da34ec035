"""LivePortrait's warping module (W): the source feature volume moved from the source keypoints
to the driving ones, folded into a 2-D feature map for the decoder."""

import torch
from torch import nn

from engine.families.liveportrait.blocks import SameBlock2d, sample_3d
from engine.families.liveportrait.dense_motion import DenseMotionNetwork


class WarpingNetwork(nn.Module):
    """Dense motion, then f_s sampled at the deformation, its depth folded into channels
    (max_features = C x D), a 3x3 convolution with batch norm and LeakyReLU (0.01) to
    block_expansion * 2^num_down_blocks channels, a 1x1 convolution, times the occlusion map.

    `flag_use_occlusion_map`: the published keyword that leaves no trace in the tensors (default on).
    """

    def __init__(
        self,
        num_kp: int,
        block_expansion: int,
        max_features: int,
        num_down_blocks: int,
        reshape_channel: int,
        estimate_occlusion_map: bool = True,
        dense_motion_params: dict | None = None,
        flag_use_occlusion_map: bool = True,
    ):
        super().__init__()
        if dense_motion_params is None:
            raise ValueError("the warping module needs its dense motion network")
        self.dense_motion_network = DenseMotionNetwork(
            num_kp=num_kp,
            feature_channel=reshape_channel,
            estimate_occlusion_map=estimate_occlusion_map,
            **dense_motion_params,
        )
        out_features = block_expansion * 2**num_down_blocks
        self.third = SameBlock2d(max_features, out_features, leaky=True)
        self.fourth = nn.Conv2d(out_features, out_features, kernel_size=1)
        self.flag_use_occlusion_map = flag_use_occlusion_map

    def forward(self, feature_3d: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> dict:
        """f_s (N, C, D, H, W), keypoints (N, K, 3) -> occlusion_map (N, 1, H, W) or None,
        deformation (N, D, H, W, 3), out (N, out_features, H, W)."""
        dense_motion = self.dense_motion_network(feature_3d, kp_driving, kp_source)
        occlusion_map = dense_motion.get("occlusion_map")
        deformation = dense_motion["deformation"]
        out = sample_3d(feature_3d, deformation)
        n, c, d, h, w = out.shape
        out = self.fourth(self.third(out.view(n, c * d, h, w)))
        if self.flag_use_occlusion_map and occlusion_map is not None:
            out = out * occlusion_map
        return {"occlusion_map": occlusion_map, "deformation": deformation, "out": out}
