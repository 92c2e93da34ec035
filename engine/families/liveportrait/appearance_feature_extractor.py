"""LivePortrait's appearance feature extractor (F): the source crop as a 3-D feature volume f_s."""

import torch
from torch import nn

from engine.families.liveportrait.blocks import DownBlock2d, ResBlock3d, SameBlock2d, level_width


class AppearanceFeatureExtractor(nn.Module):
    """2-D encoder (num_down_blocks halvings), a 1x1 convolution to max_features channels read as
    reshape_channel x reshape_depth (channel index c * depth + d), then 3-D residual blocks.

    (N, image_channel, H, W) in [0, 1] -> f_s (N, reshape_channel, reshape_depth, H / 2^n, W / 2^n).
    """

    def __init__(
        self,
        image_channel: int,
        block_expansion: int,
        num_down_blocks: int,
        max_features: int,
        reshape_channel: int,
        reshape_depth: int,
        num_resblocks: int,
    ):
        super().__init__()
        if reshape_channel * reshape_depth != max_features:
            raise ValueError(f"{max_features} channels are not {reshape_channel} x {reshape_depth}")
        self.reshape_channel = reshape_channel
        self.reshape_depth = reshape_depth
        self.first = SameBlock2d(image_channel, block_expansion)
        self.down_blocks = nn.ModuleList(
            DownBlock2d(
                level_width(block_expansion, i, max_features),
                level_width(block_expansion, i + 1, max_features),
            )
            for i in range(num_down_blocks)
        )
        encoded = level_width(block_expansion, num_down_blocks, max_features)
        self.second = nn.Conv2d(encoded, max_features, kernel_size=1)
        self.resblocks_3d = nn.Sequential()
        for i in range(num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(reshape_channel))

    def forward(self, source_image: torch.Tensor) -> torch.Tensor:
        out = self.first(source_image)
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)  # (N, C * D, h, w)
        n, _, h, w = out.shape
        return self.resblocks_3d(out.view(n, self.reshape_channel, self.reshape_depth, h, w))
