"""Inference-only rewrites of a loaded model that keep its function (to float rounding)."""

import copy

import torch
from torch import nn

from engine.layers.blocks import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d
from engine.layers.fused import (
    ConvNormReLU,
    ConvReLU,
    DownConvReLU,
    PreActResidual,
    UpsampleConvNormReLU,
    UpsampleConvReLU,
)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def fold_into(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
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
    Instance norms depend on each image and cannot be folded; a family folds its own networks' other
    norms (ModelFamily.prepare). Returns how many were folded.
    """
    folded = 0
    for block in model.modules():
        if isinstance(block, SameBlock2d) and isinstance(block.norm, nn.BatchNorm2d):
            fold_into(block.conv, block.norm)
            block.norm = nn.Identity()
            folded += 1
        elif isinstance(block, ResBlock2d) and isinstance(block.norm2, nn.BatchNorm2d):
            fold_into(block.conv1, block.norm2)
            block.norm2 = nn.Identity()
            folded += 1
    return folded


def per_image_norm(norm: nn.Module) -> bool:
    """Whether `norm` is an affine instance norm without running statistics (as the families build
    them): what engine/layers/fused.py's `norm_relu` computes in the convolutions' layout."""
    return isinstance(norm, nn.InstanceNorm2d) and norm.affine and not norm.track_running_stats


def _upsample_foldable(conv: nn.Conv2d) -> bool:
    return conv.kernel_size == (3, 3) and conv.padding == (1, 1)


def _fused(block: nn.Module) -> nn.Module | None:
    """The fused equivalent of a block whose batch norms are folded or whose norms are instance
    norms, or None to keep it as it is."""
    kind = type(block)
    if kind in (SameBlock2d, DownBlock2d, UpBlock2d) and isinstance(block.norm, nn.Identity):
        if kind is SameBlock2d:
            return ConvReLU(block.conv, relu=True)
        if kind is DownBlock2d:
            return DownConvReLU(block.conv)
        if _upsample_foldable(block.conv):
            return UpsampleConvReLU(block.conv)
    if kind in (SameBlock2d, DownBlock2d, UpBlock2d) and per_image_norm(block.norm):
        if kind is not UpBlock2d:
            return ConvNormReLU(block.conv, block.norm, pool=kind is DownBlock2d)
        if _upsample_foldable(block.conv):
            return UpsampleConvNormReLU(block.conv, block.norm)
    if kind is ResBlock2d and isinstance(block.norm2, nn.Identity):
        return PreActResidual(block.norm1, block.conv1, block.conv2)
    if kind is ResBlock2d and per_image_norm(block.norm1) and per_image_norm(block.norm2):
        return PreActResidual(block.norm1, block.conv1, block.conv2, block.norm2)
    return None


@torch.no_grad()
def fuse_for_inference(model: nn.Module) -> int:
    """Replace folded and instance-normalised blocks by engine/layers/fused.py's (ReLU and residual
    sums inside the convolution, upsampling inside the next convolution, instance norms in the
    convolutions' layout), in place. Returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            fused = _fused(child)
            if fused is not None:
                setattr(parent, name, fused)
                replaced += 1
    return replaced


def prepare_for_inference(model: nn.Module, device: str) -> nn.Module:
    """Eval mode, batch norm folded, blocks fused, channels-last weights on `device`; in place."""
    model.eval()
    fold_batch_norm(model)
    fuse_for_inference(model)
    return model.to(device=device, memory_format=torch.channels_last)


def lowered_copy(network: nn.Module, lowered: list[nn.Module], dtype: torch.dtype) -> nn.Module:
    """A deep copy of `network` in which the parameters and buffers of its submodules `lowered`
    are already `dtype` and every other tensor is shared with `network`: no float32 weight is
    copied (a deep copy of a vox-256 TPSMM copies 240 MB, then casts half of it). The copy's
    `lowered` modules are then wrapped in LowPrecision, whose cast finds them in `dtype`."""
    inside = {id(t) for module in lowered for t in (*module.parameters(), *module.buffers())}
    memo: dict[int, torch.Tensor] = {}
    for tensor in (*network.parameters(), *network.buffers()):
        if id(tensor) not in inside or not tensor.is_floating_point():
            memo[id(tensor)] = tensor
        elif isinstance(tensor, nn.Parameter):
            memo[id(tensor)] = nn.Parameter(tensor.detach().to(dtype), requires_grad=tensor.requires_grad)
        else:
            memo[id(tensor)] = tensor.to(dtype)
    return copy.deepcopy(network, memo)


class LowPrecision(nn.Module):
    """Runs a convolution stack in bfloat16/float16 with its weights stored in that type.

    Autocast would re-cast every weight on every call; storing them once saves that copy. Inputs
    are cast in and outputs back to float32, so the geometry around it (keypoints, flows,
    sampling) stays in float32; with `keep_output` the output stays in `dtype`, for a next stack
    that reads it (a decoder's levels), which then casts only what joins it from float32.
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype, keep_output: bool = False):
        super().__init__()
        self.module = module.to(dtype)
        self.dtype = dtype
        self.keep_output = keep_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layout = torch.channels_last if x.dim() == 4 else torch.preserve_format
        out = self.module(x.to(self.dtype, memory_format=layout))
        return out if self.keep_output else out.float()


def joining(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`x` in the dtype and memory layout of `like`, which it is about to be concatenated or
    blended with: a mixed-layout concatenation, and the copy back when the next stack casts it,
    cost more than the arithmetic around them (a fifth of a bf16 frame of a decoder with skips)."""
    layout = (
        torch.channels_last
        if like.dim() == 4
        and not like.is_contiguous()
        and like.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )
    return x.to(like.dtype, memory_format=layout)
