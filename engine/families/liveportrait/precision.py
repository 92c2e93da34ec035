"""LivePortrait's precision policy and its one fold for inference.

The SPADE decoder (most of a frame's work at the published widths, all 2-D convolutions) may run in
bfloat16/float16: one cast in and one out. The motion extractor (keypoints, head pose), the dense
motion network (the deformation, a geometry) and the 3-D sampling of the feature volume stay
float32, as does the appearance feature extractor, which runs once per job.
"""

import copy

import torch
from torch import nn

from engine.families.liveportrait.spade_generator import SPADEDecoder
from engine.families.liveportrait.spectral_norm import SpectralNormConv2d
from engine.layers.inference import LowPrecision


@torch.no_grad()
def bake_spectral_norm(model: nn.Module) -> int:
    """Each SpectralNormConv2d replaced by a plain convolution with its weight divided once by the
    stored estimate (the stored u, v never change at inference), in place. Returns how many."""
    baked = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SpectralNormConv2d):
                weight = child.weight()
                conv = nn.Conv2d(
                    weight.shape[1], weight.shape[0], weight.shape[2:], padding=child.padding,
                    bias=child.bias is not None, device=weight.device, dtype=weight.dtype,
                )  # fmt: skip
                conv.weight.copy_(weight)
                if child.bias is not None:
                    conv.bias.copy_(child.bias)
                setattr(parent, name, conv)
                baked += 1
    return baked


def prepare_liveportrait(model: nn.Module, device: str) -> nn.Module:
    """Eval mode, spectral norms baked, on `device`; in place. The weights keep their layout: the
    3-D convolutions have no channels-last form, and the 2-D ones get channels-last inputs."""
    model.eval()
    bake_spectral_norm(model)
    return model.to(device)


def low_precision_decoder(decoder: SPADEDecoder, dtype: torch.dtype) -> LowPrecision:
    """A copy of the decoder whose weights and work are `dtype`, taking and giving float32."""
    return LowPrecision(copy.deepcopy(decoder), dtype)
