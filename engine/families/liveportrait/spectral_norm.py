"""Convolutions stored with spectral normalisation, evaluated as at inference.

The published decoder wraps its convolutions in `torch.nn.utils.spectral_norm`: the files hold
`weight_orig`, `weight_u` and `weight_v`. At inference the weight is weight_orig / (u . (W v)),
W = weight_orig as (out, in * kh * kw), with the stored u and v as they are: no power iteration,
and not the exact largest singular value (the stored vectors need not have converged).
"""

import torch
import torch.nn.functional as F
from torch import nn


class SpectralNormConv2d(nn.Module):
    """A 2-D convolution whose weight is divided by the stored spectral-norm estimate."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, bias: bool = True
    ):
        super().__init__()
        # Registered in the published files' key order: bias, weight_orig, weight_u, weight_v.
        self.register_parameter("bias", nn.Parameter(torch.zeros(out_channels)) if bias else None)
        self.weight_orig = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.register_buffer("weight_u", F.normalize(torch.randn(out_channels), dim=0, eps=1e-12))
        self.register_buffer(
            "weight_v", F.normalize(torch.randn(in_channels * kernel_size**2), dim=0, eps=1e-12)
        )
        nn.init.kaiming_uniform_(self.weight_orig, a=5**0.5)
        self.padding = padding

    def weight(self) -> torch.Tensor:
        """weight_orig / sigma with sigma = u . (W v)."""
        sigma = torch.dot(self.weight_u, torch.mv(self.weight_orig.flatten(1), self.weight_v))
        return self.weight_orig / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, padding=self.padding)
