"""LivePortrait's decoder (G): SPADE residual blocks conditioned on the warped feature map, two 2x
upsamplings and, with `upscale`, a pixel shuffle to twice that size; a sigmoid image."""

import torch
import torch.nn.functional as F
from torch import nn

from engine.families.liveportrait.spectral_norm import SpectralNormConv2d

NUM_MIDDLE_BLOCKS = 6  # G_middle_0..5: fixed in the published code, not a parameter


class SPADE(nn.Module):
    """Instance norm without affine (eps 1e-5) modulated per pixel: * (1 + gamma) + beta, both
    predicted from the condition resized (nearest) to x's size by a shared 3x3 convolution and ReLU."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128):
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel_size=3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, kernel_size=3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        normalized = F.instance_norm(x, eps=1e-5)
        actv = self.mlp_shared(F.interpolate(segmap, size=x.shape[2:], mode="nearest"))
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    """Two (SPADE, LeakyReLU 0.2, spectral-normed 3x3 convolution) steps through min(fin, fout)
    channels, plus the input; through SPADE and a spectral-normed 1x1 convolution when fin != fout."""

    def __init__(self, fin: int, fout: int, label_nc: int, hidden: int = 128):
        super().__init__()
        middle = min(fin, fout)
        self.learned_shortcut = fin != fout
        self.conv_0 = SpectralNormConv2d(fin, middle, kernel_size=3, padding=1)
        self.conv_1 = SpectralNormConv2d(middle, fout, kernel_size=3, padding=1)
        if self.learned_shortcut:
            self.conv_s = SpectralNormConv2d(fin, fout, kernel_size=1, bias=False)
        self.norm_0 = SPADE(fin, label_nc, hidden)
        self.norm_1 = SPADE(middle, label_nc, hidden)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc, hidden)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return shortcut + dx


class SPADEDecoder(nn.Module):
    """(N, C, H, W) warped features (C = min(max_features, block_expansion * 2^num_down_blocks))
    -> (N, 3, 4H, 4W) in (0, 1), or (N, 3, 8H, 8W) with upscale > 1 (the published 2)."""

    def __init__(
        self,
        upscale: int = 1,
        max_features: int = 256,
        block_expansion: int = 64,
        out_channels: int = 64,
        num_down_blocks: int = 2,
        hidden: int = 128,
    ):
        super().__init__()
        channels = min(max_features, block_expansion * 2**num_down_blocks)
        self.fc = nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1)
        for i in range(NUM_MIDDLE_BLOCKS):
            self.add_module(f"G_middle_{i}", SPADEResnetBlock(2 * channels, 2 * channels, channels, hidden))
        self.up_0 = SPADEResnetBlock(2 * channels, channels, channels, hidden)
        self.up_1 = SPADEResnetBlock(channels, out_channels, channels, hidden)
        self.upscale = upscale
        if upscale is None or upscale <= 1:
            self.conv_img = nn.Conv2d(out_channels, 3, kernel_size=3, padding=1)
        else:  # the published code shuffles by 2 whatever upscale > 1 says
            self.conv_img = nn.Sequential(
                nn.Conv2d(out_channels, 3 * 2 * 2, kernel_size=3, padding=1), nn.PixelShuffle(2)
            )

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        x = self.fc(feature)
        for i in range(NUM_MIDDLE_BLOCKS):
            x = getattr(self, f"G_middle_{i}")(x, feature)
        x = self.up_0(F.interpolate(x, scale_factor=2.0, mode="nearest"), feature)
        x = self.up_1(F.interpolate(x, scale_factor=2.0, mode="nearest"), feature)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2)))
