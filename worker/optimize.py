"""Inference-only rewrites of a loaded model that keep its function (to float rounding)."""

import copy

import torch
from torch import nn

from worker.models.blocks import ResBlock2d, SameBlock2d
from worker.models.generator import Generator
from worker.models.tpsmm.dense_motion import DenseMotionNetwork
from worker.models.tpsmm.inpainting import InpaintingNetwork
from worker.models.tpsmm.resnet import BasicBlock, ResNet18

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _fold_into(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """conv followed by eval-mode norm becomes one conv: W' = W * s, b' = (b - mean) * s + beta."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # (C_out,)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias)


@torch.no_grad()
def fold_batch_norm(model: nn.Module) -> int:
    """Fold every eval-mode batch norm that directly follows a convolution into it, in place.

    conv -> norm -> ReLU blocks become conv -> ReLU, and in the pre-activation residual blocks the
    second norm folds into the first conv; their first norm, which also feeds the skip path, stays.
    In ResNet-18 (TPSMM) every norm follows a convolution. Instance norms (TPSMM's other networks)
    depend on each image and cannot be folded. Returns how many were folded.
    """
    folded = 0
    for block in model.modules():
        if isinstance(block, SameBlock2d) and isinstance(block.norm, nn.BatchNorm2d):
            _fold_into(block.conv, block.norm)
            block.norm = nn.Identity()
            folded += 1
        elif isinstance(block, ResBlock2d) and isinstance(block.norm2, nn.BatchNorm2d):
            _fold_into(block.conv1, block.norm2)
            block.norm2 = nn.Identity()
            folded += 1
        elif isinstance(block, (ResNet18, BasicBlock)):
            pairs = (
                [("conv1", "bn1"), ("conv2", "bn2")] if isinstance(block, BasicBlock) else [("conv1", "bn1")]
            )
            for conv, norm in pairs:
                if isinstance(getattr(block, norm), nn.BatchNorm2d):
                    _fold_into(getattr(block, conv), getattr(block, norm))
                    setattr(block, norm, nn.Identity())
                    folded += 1
            shortcut = getattr(block, "downsample", None)
            if shortcut is not None and isinstance(shortcut[1], nn.BatchNorm2d):
                _fold_into(shortcut[0], shortcut[1])
                shortcut[1] = nn.Identity()
                folded += 1
    return folded


def prepare_for_inference(model: nn.Module, device: str) -> nn.Module:
    """Eval mode, batch norm folded, channels-last weights on `device`; modifies `model` in place."""
    model.eval()
    fold_batch_norm(model)
    return model.to(device=device, memory_format=torch.channels_last)


class LowPrecision(nn.Module):
    """Runs a convolution stack in bfloat16/float16 with its weights stored in that type.

    Autocast would re-cast every weight on every call; storing them once saves that copy. Inputs
    are cast in and outputs back to float32, so the geometry around it (keypoints, flows,
    sampling) stays in float32.
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module = module.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.dtype)).float()


def low_precision_generator(generator: Generator, dtype: torch.dtype) -> Generator:
    """A copy of `generator` whose convolution stacks run in `dtype`; keypoint geometry stays fp32."""
    lowered = copy.deepcopy(generator)
    lowered.first = LowPrecision(lowered.first, dtype)
    lowered.down_blocks = nn.ModuleList(LowPrecision(b, dtype) for b in lowered.down_blocks)
    lowered.bottleneck = LowPrecision(lowered.bottleneck, dtype)
    lowered.up_blocks = nn.ModuleList(LowPrecision(b, dtype) for b in lowered.up_blocks)
    lowered.final = LowPrecision(lowered.final, dtype)
    if lowered.dense_motion_network is not None:
        motion = lowered.dense_motion_network
        motion.hourglass = LowPrecision(motion.hourglass, dtype)
    return lowered


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
