"""Inference-only convolution blocks: what follows each convolution runs inside it.

On CPU, oneDNN applies a ReLU or a residual sum as a post-op of the convolution, so the activation
is written once instead of being read and written again by a separate pass. A nearest 2x upsampling
followed by a 3x3 convolution is computed at the low resolution (see `UpsampleConvReLU`). Instance
norms (which depend on each image, so cannot be folded) run as a channels-last group norm with a
ReLU in place (`norm_relu`). Elsewhere (a GPU, or bf16 on a CPU without bf16 kernels) the same
blocks run as plain PyTorch operations. Built from a loaded model with batch norm already folded
(engine/layers/inference.py).
"""

import torch
import torch.nn.functional as F
from torch import nn

from engine.hardware import onednn_bf16
from engine.layers.blocks import exporting


def _onednn(x: torch.Tensor) -> bool:
    """Whether oneDNN's fused convolutions serve this input: CPU, with kernels for its dtype, not traced."""
    if x.device.type != "cpu" or exporting():
        return False
    return x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and onednn_bf16())


def norm_relu(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """ReLU(norm(x)), in x's channels-last layout where the norm is an instance norm.

    F.instance_norm returns a contiguous (NCHW) tensor, so the next convolution copies it back to
    channels-last, and its kernel is slow on channels-last input; a group norm with one group per
    channel is the same function (per image and channel statistics, biased variance, the same eps)
    and keeps the layout: 10-20x faster on a 512 x 64 x 64 map (docs/BENCHMARKS.md). Exporters
    trace the plain instance norm, which they all convert.
    """
    if isinstance(norm, nn.InstanceNorm2d) and not exporting():
        return F.group_norm(x, x.shape[1], norm.weight, norm.bias, norm.eps).relu_()
    return F.relu(norm(x))


class PackedWeights:
    """oneDNN's blocked copies of one convolution's weight, one per dtype, made on its first call.

    Given a plain weight, every oneDNN convolution first reorders it into the blocked layout its
    kernel reads, on every call: at the hourglasses' low resolutions, whose weights are largest
    (a 1024 -> 4 x 1024 phase kernel is 64 MB in float32), that reorder cost 5x the convolution
    (docs/BENCHMARKS.md). The copies are a cache, not state: copying or pickling a module starts
    an empty one, and the plain weight stays what exporters, GPUs and state dicts read.
    """

    def __init__(self) -> None:
        self.by_dtype: dict[torch.dtype, torch.Tensor] = {}

    def __deepcopy__(self, memo: dict) -> "PackedWeights":
        return PackedWeights()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.by_dtype = {}


class ConvReLU(nn.Module):
    """A convolution (zero padding), optionally followed by ReLU, as one primitive on CPU."""

    def __init__(self, conv: nn.Conv2d, relu: bool, weight: torch.Tensor | None = None):
        """`weight` (with the bias repeated to match) replaces conv's when given."""
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("only explicit zero padding is fused")
        self.weight = conv.weight if weight is None else nn.Parameter(weight)
        self.bias = conv.bias
        if weight is not None and conv.bias is not None:
            self.bias = nn.Parameter(conv.bias.detach().repeat(weight.shape[0] // conv.bias.shape[0]))
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.relu = relu
        self.packed = PackedWeights()

    def onednn_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The weight in oneDNN's layout for input like `x` (packed on the first call; a later
        batch size reuses it, which oneDNN's kernels accept as it is)."""
        packed = self.packed.by_dtype.get(x.dtype)
        if packed is None and self.weight.dtype == x.dtype:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight.detach(), self.padding, self.stride, self.dilation, self.groups, list(x.shape)
            )
            self.packed.by_dtype[x.dtype] = packed
        return self.weight if packed is None else packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _onednn(x):
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.onednn_weight(x), self.bias, self.padding, self.stride, self.dilation, self.groups,
                "relu" if self.relu else "none", [], "",
            )  # fmt: skip
        out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return F.relu_(out) if self.relu else out


class DownConvReLU(nn.Module):
    """Convolution and ReLU as one primitive, then 2x average pooling."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = ConvReLU(conv, relu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(x), kernel_size=2)


class ConvNormReLU(nn.Module):
    """Convolution (one primitive), instance norm and ReLU in its layout (`norm_relu`), then
    optionally 2x average pooling: SameBlock2d and DownBlock2d with an instance norm."""

    def __init__(self, conv: nn.Conv2d, norm: nn.Module, pool: bool = False):
        super().__init__()
        self.conv = ConvReLU(conv, relu=False)
        self.norm = norm
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = norm_relu(self.conv(x), self.norm)
        return F.avg_pool2d(out, kernel_size=2) if self.pool else out


# An output row of parity 0 after nearest 2x upsampling reads input rows (i-1, i) with kernel rows
# (0, 1+2); parity 1 reads rows (i, i+1) with kernel rows (0+1, 2). PHASE_TAPS[parity, tap, kernel_row].
PHASE_TAPS = torch.tensor([[[1.0, 0, 0], [0, 1, 1]], [[1.0, 1, 0], [0, 0, 1]]])
# The 9 taps of a 3x3 kernel -> the 4 phases' 2x2 taps: (3 * 3, a * b * 2 * 2).
PHASE_MAP = torch.einsum("aps,bqt->stabpq", PHASE_TAPS, PHASE_TAPS).reshape(9, 16)


class UpsampleConvReLU(nn.Module):
    """Nearest 2x upsampling, 3x3 convolution (padding 1) and ReLU, computed at the low resolution.

    Each of the four output phases (row parity a, column parity b) is a 2x2 convolution of the
    low-resolution input; all four are one convolution with four times the output channels and
    padding 1, whose (H+1, W+1) output holds phase (a, b) at offset (a, b). 16 multiply-adds per
    low-resolution pixel and channel pair instead of 36, and the upsampled input never exists.
    """

    def __init__(self, conv: nn.Conv2d, relu: bool = True):
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1) or conv.groups != 1:
            raise ValueError("only a 3x3 convolution with padding 1 folds into the upsampling")
        kernel = conv.weight.detach()  # (O, I, 3, 3)
        o, i = kernel.shape[:2]
        phases = kernel.reshape(o * i, 9) @ PHASE_MAP.to(kernel)  # (O I, a b p q): one small GEMM
        weight = phases.view(o, i, 4, 2, 2).permute(2, 0, 1, 3, 4).reshape(4 * o, i, 2, 2)  # (a b o, I, 2, 2)
        self.conv = ConvReLU(conv, relu=relu, weight=weight)
        self.conv.padding = [1, 1]
        self.out_channels = kernel.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        o = self.out_channels
        if exporting():
            return self._interleave(self.conv(x), h, w)
        phases = self.conv(x).permute(0, 2, 3, 1)  # (N, H+1, W+1, 4*O)
        out = torch.empty((n, 2 * h, 2 * w, o), dtype=phases.dtype, device=x.device)  # channels-last memory
        tiles = out.view(n, h, 2, w, 2, o)  # the same memory, by phase
        for a in (0, 1):
            for b in (0, 1):
                phase = 2 * a + b
                tiles[:, :, a, :, b, :].copy_(phases[:, a : a + h, b : b + w, phase * o : (phase + 1) * o])
        return out.permute(0, 3, 1, 2)  # (N, O, 2H, 2W), channels-last

    def _interleave(self, phases: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The same assembly as a pure function of `phases` (N, 4*O, H+1, W+1), for exporters."""
        o = self.out_channels
        tiles = [
            phases[:, (2 * a + b) * o : (2 * a + b + 1) * o, a : a + h, b : b + w]
            for a in (0, 1)
            for b in (0, 1)
        ]
        rows = [torch.stack(tiles[2 * a : 2 * a + 2], dim=-1) for a in (0, 1)]  # 2 x (N, O, H, W, 2)
        return torch.stack(rows, dim=3).reshape(phases.shape[0], o, 2 * h, 2 * w)  # from (N, O, H, 2, W, 2)


class UpsampleConvNormReLU(nn.Module):
    """UpBlock2d with an instance norm: upsampling and convolution at the low resolution
    (`UpsampleConvReLU` without its ReLU), then the norm and ReLU in its layout."""

    def __init__(self, conv: nn.Conv2d, norm: nn.Module):
        super().__init__()
        self.conv = UpsampleConvReLU(conv, relu=False)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norm_relu(self.conv(x), self.norm)


class PreActResidual(nn.Module):
    """Pre-activation residual block: norm and ReLU, conv and the second norm with ReLU (inside the
    convolution where that norm was folded into it, `norm2` None), conv + input as one primitive."""

    def __init__(self, norm: nn.Module, conv1: nn.Conv2d, conv2: nn.Conv2d, norm2: nn.Module | None = None):
        super().__init__()
        self.norm = norm
        self.conv1 = ConvReLU(conv1, relu=norm2 is None)
        self.norm2 = norm2
        self.conv2 = ConvReLU(conv2, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)  # once here, not in each primitive that reads x
        hidden = self.conv1(norm_relu(x, self.norm))
        if self.norm2 is not None:
            hidden = norm_relu(hidden, self.norm2)
        return conv_add(self.conv2, hidden, x)


def conv_add(conv: ConvReLU, x: torch.Tensor, other: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """conv(x) + other (then ReLU if asked) as one primitive on CPU; `conv` without its own ReLU."""
    if _onednn(x):
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, conv.onednn_weight(x), conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups,
            "add", 1.0, "relu" if relu else None, [], None,
        )  # fmt: skip
    out = conv(x).add_(other)
    return F.relu_(out) if relu else out
