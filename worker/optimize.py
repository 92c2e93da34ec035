"""Inference-only rewrites of a loaded model that keep its function (to float rounding)."""

import torch
from torch import nn

from worker.models.blocks import SameBlock2d


@torch.no_grad()
def fold_batch_norm(model: nn.Module) -> int:
    """Fold eval-mode batch norm into the convolution before it, in place; returns how many.

    Every conv -> norm -> ReLU block becomes conv -> ReLU, one pass over the activations fewer.
    Pre-activation residual blocks (norm before conv) are left as they are.
    """
    folded = 0
    for block in model.modules():
        if not isinstance(block, SameBlock2d) or not isinstance(block.norm, nn.BatchNorm2d):
            continue
        conv, norm = block.conv, block.norm
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # (C_out,)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias)
        block.norm = nn.Identity()
        folded += 1
    return folded


def prepare_for_inference(model: nn.Module, device: str) -> nn.Module:
    """Eval mode, batch norm folded, channels-last weights on `device`; modifies `model` in place."""
    model.eval()
    fold_batch_norm(model)
    return model.to(device=device, memory_format=torch.channels_last)
