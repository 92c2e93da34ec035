"""TPSMM's inference rewrites: its ResNet-18s' batch norms folded into their convolutions and their
residual blocks fused (engine/layers/fused.py's primitives); the hourglasses' and the inpainting
network's instance-normalised blocks are fused by engine/layers/inference.py's generic rules."""

import torch
from torch import nn

from engine.families.tpsmm.resnet import BasicBlock, ResNet18
from engine.layers.fused import ConvReLU, conv_add
from engine.layers.inference import fold_into, prepare_for_inference


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


class FusedBasicBlock(nn.Module):
    """A folded BasicBlock: conv + ReLU, then conv + shortcut + ReLU, each one primitive on CPU."""

    def __init__(self, block: BasicBlock):
        super().__init__()
        self.conv1 = ConvReLU(block.conv1, relu=True)
        self.conv2 = ConvReLU(block.conv2, relu=False)
        self.downsample = None if block.downsample is None else ConvReLU(block.downsample[0], relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        shortcut = x if self.downsample is None else self.downsample(x)
        return conv_add(self.conv2, self.conv1(x), shortcut, relu=True)


@torch.no_grad()
def fuse_resnet_blocks(model: nn.Module) -> int:
    """Replace every folded BasicBlock by a FusedBasicBlock, in place; returns how many."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BasicBlock) and isinstance(child.bn2, nn.Identity):
                setattr(parent, name, FusedBasicBlock(child))
                replaced += 1
    return replaced


def prepare_tpsmm(model: nn.Module, device: str) -> nn.Module:
    """Eval mode, every batch norm folded, ResNet and hourglass blocks fused, channels-last; in place."""
    model.eval()
    fold_resnet_norms(model)
    fuse_resnet_blocks(model)
    return prepare_for_inference(model, device)
