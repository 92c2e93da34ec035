"""TPSMM's precision policy: which of its blocks may run in bfloat16 or float16."""

import copy

import torch

from engine.families.tpsmm.dense_motion import DenseMotionNetwork
from engine.families.tpsmm.inpainting import InpaintingNetwork
from engine.layers.inference import LowPrecision


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
