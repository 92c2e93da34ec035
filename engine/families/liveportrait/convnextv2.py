"""ConvNeXt-V2 (Woo et al., 2023) as LivePortrait's motion extractor uses it: four stages of
blocks, global average pooling, and seven linear heads instead of a classifier."""

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("kp", "scale", "pitch", "yaw", "roll", "t", "exp")  # the published order of the fc_* heads


class ChannelsFirstLayerNorm(nn.Module):
    """Layer norm over the channels of (N, C, H, W), written out as published (eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GRN(nn.Module):
    """Global response normalisation of (N, H, W, C): each channel's L2 norm over the image,
    divided by its mean over channels (+1e-6), scales the input; gamma, beta and a residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        scaled = norm / (norm.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * scaled) + self.beta + x


class Block(nn.Module):
    """Depthwise 7x7 convolution, layer norm, 4x inverted bottleneck with GELU (erf) and GRN, residual."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dwconv(x).permute(0, 2, 3, 1)  # (N, H, W, C)
        out = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(out)))))
        return x + out.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    """Stem (4x4 stride-4 convolution, layer norm), then per stage: a downsampling (layer norm,
    2x2 stride-2 convolution) except before the first, and depths[i] blocks of width dims[i].

    (N, in_chans, H, W) -> {kp (N, 3K), exp (N, 3K), pitch, yaw, roll (N, num_bins) logits,
    t (N, 3), scale (N, 1)}, all raw (no activation).
    """

    def __init__(self, in_chans: int, depths: list[int], dims: list[int], num_kp: int, num_bins: int):
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError(f"{len(depths)} stage depths for {len(dims)} stage widths")
        stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), ChannelsFirstLayerNorm(dims[0])
        )
        self.downsample_layers = nn.ModuleList([stem])
        for i in range(len(dims) - 1):
            self.downsample_layers.append(
                nn.Sequential(
                    ChannelsFirstLayerNorm(dims[i]), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)
                )
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*(Block(dim) for _ in range(depth)))
            for depth, dim in zip(depths, dims, strict=True)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        sizes = {"kp": 3 * num_kp, "scale": 1, "pitch": num_bins, "yaw": num_bins, "roll": num_bins}
        sizes |= {"t": 3, "exp": 3 * num_kp}
        for head in HEADS:
            self.add_module(f"fc_{head}", nn.Linear(dims[-1], sizes[head]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        for downsample, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(downsample(x))
        features = self.norm(x.mean([-2, -1]))  # (N, dims[-1])
        return {head: getattr(self, f"fc_{head}")(features) for head in HEADS}
