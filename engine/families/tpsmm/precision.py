"""TPSMM's precision policy: which of its blocks may run in bfloat16 or float16.

The parts that may be lowered, each measured alone (docs/BENCHMARKS.md, "TPSMM's bf16 policy"):
- `inpainting_decoder`: the residual and up blocks of each level and the final convolution, about
  85 % of a frame's time: 1.7x faster in bf16 with native kernels; the levels pass bf16 on, and
  only the warped skip features are cast to join them.
- `dense_motion_hourglass`: the hourglass whose last level mixes the thin-plate splines into the
  flow: 5 % of a bf16 frame, and the flow moves by 0.0024 px at most (the small trained model,
  real 64 px frames).
- `inpainting_encoder`: the source's features, once per job.
- `occlusion_up`: the dense motion network's up blocks, which only make the two finest occlusion
  masks: no measurable gain, no loss.
- `occlusion_heads`: the 7x7 convolutions to one channel before each occlusion mask's sigmoid:
  oneDNN computes 16 output channels at a time, so in float32 they were a fifth of the non-decoder
  time; 5-10x faster in bf16 with AMX, and they move no flow (docs/BENCHMARKS.md).
All are lowered. The keypoints, the splines, the contribution head, the sigmoids, warps and blends
stay float32.
"""

import torch
from torch import nn

from engine.families.tpsmm.dense_motion import DenseMotionNetwork
from engine.families.tpsmm.inpainting import InpaintingNetwork
from engine.layers.inference import LowPrecision, lowered_copy

PARTS = (
    "dense_motion_hourglass",
    "occlusion_up",
    "occlusion_heads",
    "inpainting_encoder",
    "inpainting_decoder",
)
LOW_PRECISION_PARTS = PARTS


def _lower_each(blocks: nn.ModuleList, dtype: torch.dtype) -> None:
    for i, block in enumerate(blocks):
        blocks[i] = LowPrecision(block, dtype)


def _lower_decoder(inpainting: InpaintingNetwork, dtype: torch.dtype) -> None:
    """Each level's two residual blocks and up block as one LowPrecision, in the first residual
    block's place (the others become identities, which `decode` calls in the same order). Levels
    hand each other `dtype`: `decode` brings each level's skip features to it, and the final
    convolution's input is blended in it."""
    for i, up in enumerate(inpainting.up_blocks):
        first, second = inpainting.resblock[2 * i], inpainting.resblock[2 * i + 1]
        inpainting.resblock[2 * i] = LowPrecision(nn.Sequential(first, second, up), dtype, keep_output=True)
        inpainting.resblock[2 * i + 1] = nn.Identity()
        inpainting.up_blocks[i] = nn.Identity()
    inpainting.final = LowPrecision(inpainting.final, dtype)


def _lowered_parts(
    dense_motion: DenseMotionNetwork, inpainting: InpaintingNetwork, parts: tuple[str, ...]
) -> tuple[list[nn.Module], list[nn.Module]]:
    """The modules of each network that `parts` lower."""
    motion: list[nn.Module] = []
    painting: list[nn.Module] = []
    if "dense_motion_hourglass" in parts:
        motion += [*dense_motion.hourglass.encoder.down_blocks, *dense_motion.hourglass.decoder.up_blocks]
    if "occlusion_up" in parts:
        motion += list(dense_motion.up)
    if "occlusion_heads" in parts:
        motion += list(dense_motion.occlusion)
    if "inpainting_encoder" in parts:
        painting += [inpainting.first, *inpainting.down_blocks]
    if "inpainting_decoder" in parts:
        painting += [*inpainting.resblock, *inpainting.up_blocks, inpainting.final]
    return motion, painting


def low_precision_tpsmm(
    dense_motion: DenseMotionNetwork,
    inpainting: InpaintingNetwork,
    dtype: torch.dtype,
    parts: tuple[str, ...] = LOW_PRECISION_PARTS,
) -> tuple[DenseMotionNetwork, InpaintingNetwork]:
    """Copies of TPSMM's two heavy networks whose `parts` (of PARTS) run in `dtype`; the float32
    weights of the other parts are shared with the originals, not copied."""
    motion, painting = _lowered_parts(dense_motion, inpainting, parts)
    dense_motion = lowered_copy(dense_motion, motion, dtype)
    inpainting = lowered_copy(inpainting, painting, dtype)
    if "dense_motion_hourglass" in parts:
        _lower_each(dense_motion.hourglass.encoder.down_blocks, dtype)
        _lower_each(dense_motion.hourglass.decoder.up_blocks, dtype)
    if "occlusion_up" in parts:
        _lower_each(dense_motion.up, dtype)
    if "occlusion_heads" in parts:
        _lower_each(dense_motion.occlusion, dtype)
    if "inpainting_encoder" in parts:
        inpainting.first = LowPrecision(inpainting.first, dtype)
        _lower_each(inpainting.down_blocks, dtype)
    if "inpainting_decoder" in parts:
        _lower_decoder(inpainting, dtype)
    return dense_motion, inpainting
