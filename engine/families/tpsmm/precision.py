"""TPSMM's inference rules: its ResNet's batch norms folded, and which blocks may run in bfloat16."""

import copy

import torch
from torch import nn

from engine.families.tpsmm.dense_motion import DenseMotionNetwork
from engine.families.tpsmm.inpainting import InpaintingNetwork
from engine.families.tpsmm.resnet import BasicBlock, ResNet18
from engine.layers.inference import LowPrecision, fold_into


@torch.no_grad()
def fold_resnet_norms(model: nn.Module) -> int:
    """Fold the batch norms of every ResNet-18 (keypoint detector, background predictor) into the
    convolutions before them, in place; in ResNet-18 every norm follows a convolution."""
    folded = 0
    for block in model.modules():
        if not isinstance(block, (ResNet18, BasicBlock)):
            continue
        pairs = [("conv1", "bn1"), ("conv2", "bn2")] if isinstance(block, BasicBlock) else [("conv1", "bn1")]
        for conv, norm in pairs:
            if isinstance(getattr(block, norm), nn.BatchNorm2d):
                fold_into(getattr(block, conv), getattr(block, norm))
                setattr(block, norm, nn.Identity())
                folded += 1
        shortcut = getattr(block, "downsample", None)
        if shortcut is not None and isinstance(shortcut[1], nn.BatchNorm2d):
            fold_into(shortcut[0], shortcut[1])
            shortcut[1] = nn.Identity()
            folded += 1
    return folded


def low_precision_tpsmm(
    dense_motion: DenseMotionNetwork, inpainting: InpaintingNetwork, dtype: torch.dtype
) -> tuple[DenseMotionNetwork, InpaintingNetwork]:
    """Copies of TPSMM's two heavy networks whose convolution blocks run in `dtype`.

    Block by block, because the dense motion network reads every hourglass level; the thin-plate
    splines, contribution and occlusion heads, warps and blends stay float32.
    """
    dense_motion, inpainting = copy.deepcopy(dense_motion), copy.deepcopy(inpainting)
    hourglass = dense_motion.hourglass
    for blocks in (hourglass.encoder.down_blocks, hourglass.decoder.up_blocks, dense_motion.up):
        for i, block in enumerate(blocks):
            blocks[i] = LowPrecision(block, dtype)
    for blocks in (inpainting.down_blocks, inpainting.resblock, inpainting.up_blocks):
        for i, block in enumerate(blocks):
            blocks[i] = LowPrecision(block, dtype)
    inpainting.first = LowPrecision(inpainting.first, dtype)
    inpainting.final = LowPrecision(inpainting.final, dtype)
    return dense_motion, inpainting
