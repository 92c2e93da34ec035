"""TPSMM's inpainting network: the source's features warped and masked at every encoder level,
decoded into the driving frame; the occluded parts of the finest level are painted in."""

import torch
import torch.nn.functional as F
from torch import nn

from engine.layers.blocks import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d, instance_norm, warp
from engine.layers.inference import joining


def deform(image: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
    """Warp (N, C, H, W) by a flow (N, h, w, 2) resized to (H, W) bilinearly, corners aligned."""
    h, w = image.shape[2:]
    if deformation.shape[1:3] != (h, w):
        flow = F.interpolate(
            deformation.permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=True
        )
        deformation = flow.permute(0, 2, 3, 1)
    return warp(image, deformation)


class InpaintingNetwork(nn.Module):
    """Encoder (num_down_blocks levels), then per level coarse to fine: two residual blocks, an up
    block, and the warped, occlusion-masked encoder features of the next finer level."""

    def __init__(self, num_channels: int, block_expansion: int, max_features: int, num_down_blocks: int):
        super().__init__()

        def width(level: int) -> int:
            return min(max_features, block_expansion * 2**level)

        self.num_down_blocks = num_down_blocks
        self.first = SameBlock2d(num_channels, block_expansion, kernel_size=7, padding=3, norm=instance_norm)
        self.down_blocks = nn.ModuleList(
            DownBlock2d(width(i), width(i + 1), norm=instance_norm) for i in range(num_down_blocks)
        )
        # The deepest level's input is the warped bottleneck; finer ones also carry the skip features.
        up_in = [width(num_down_blocks)] + [2 * width(num_down_blocks - i) for i in range(1, num_down_blocks)]
        self.up_blocks = nn.ModuleList(
            UpBlock2d(up_in[i], width(num_down_blocks - i - 1), norm=instance_norm)
            for i in range(num_down_blocks)
        )
        self.resblock = nn.ModuleList(
            ResBlock2d(up_in[i // 2], norm=instance_norm) for i in range(2 * num_down_blocks)
        )
        self.final = nn.Conv2d(block_expansion, num_channels, kernel_size=7, padding=3)

    def encode(self, source_image: torch.Tensor) -> list[torch.Tensor]:
        """The source's features at every level, finest first; depends on the source only."""
        maps = [self.first(source_image)]
        for block in self.down_blocks:
            maps.append(block(maps[-1]))
        return maps

    def decode(
        self, source_image: torch.Tensor, encoder_maps: list[torch.Tensor], dense_motion: dict
    ) -> dict:
        """`forward` from `encode`'s output, as callers that cache it have it."""
        deformation = dense_motion["deformation"]
        occlusion = dense_motion["occlusion_map"]
        out = deform(encoder_maps[-1], deformation) * occlusion[0]
        for i in range(self.num_down_blocks):
            out = self.up_blocks[i](self.resblock[2 * i + 1](self.resblock[2 * i](out)))
            skip = joining(deform(encoder_maps[-(i + 2)], deformation) * occlusion[i + 1], out)
            if i < self.num_down_blocks - 1:
                out = torch.cat([out, skip], dim=1)
        deformed = deform(source_image, deformation)
        visible = occlusion[-1]
        blended = torch.addcmul(skip, out, joining(1 - visible, out))  # out * (1 - visible) + skip
        out = torch.sigmoid(self.final(blended))
        return {
            "prediction": out * (1 - visible) + deformed * visible,
            "deformed": deformed,
            "occlusion_map": occlusion,
            "contribution_maps": dense_motion["contribution_maps"],
            "deformed_source": dense_motion["deformed_source"],
        }

    def forward(self, source_image: torch.Tensor, dense_motion: dict) -> dict:
        """source (N, C, H, W) in [0, 1] and the dense motion network's output -> prediction
        (N, C, H, W), the source warped at full resolution (`deformed`) and the motion's maps."""
        return self.decode(source_image, self.encode(source_image), dense_motion)
