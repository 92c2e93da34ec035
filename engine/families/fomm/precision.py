"""FOMM's precision policy: which of its networks may run in bfloat16 or float16."""

import torch
from torch import nn

from engine.families.fomm.generator import Generator
from engine.layers.inference import LowPrecision, lowered_copy

# The same stacks in the exported graphs (export.py), by module path: they may run in bf16.
SOURCE_LOW_PRECISION_SCOPES = ("generator.first", "generator.down_blocks")
FRAME_LOW_PRECISION_SCOPES = ("generator.bottleneck", "generator.up_blocks", "generator.final")


def low_precision_generator(generator: Generator, dtype: torch.dtype) -> Generator:
    """A copy of `generator` whose encoder and decoder stacks run in `dtype`.

    Each stack is cast in once and out once: the encoder (first block and down blocks, the source
    only) and the decoder (bottleneck, up blocks and final convolution) become one LowPrecision
    each, in the places of `first` and `bottleneck`, and the generator's loops over the parts they
    absorbed find them empty. The dense motion network, which makes the flows, is shared with
    `generator` and stays float32 like keypoints and grid sampling: in bf16 its flows moved by up
    to 0.5 px on the small reference model (docs/BENCHMARKS.md).
    """
    parts = [
        generator.first,
        *generator.down_blocks,
        generator.bottleneck,
        *generator.up_blocks,
        generator.final,
    ]
    # the dense motion network's weights shared with `generator`, as every float32 one
    lowered = lowered_copy(generator, parts, dtype)
    lowered.first = LowPrecision(nn.Sequential(lowered.first, *lowered.down_blocks), dtype)
    lowered.down_blocks = nn.ModuleList()
    lowered.bottleneck = LowPrecision(
        nn.Sequential(lowered.bottleneck, *lowered.up_blocks, lowered.final), dtype
    )
    lowered.up_blocks = nn.ModuleList()
    lowered.final = nn.Identity()
    return lowered
