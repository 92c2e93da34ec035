"""Reading an architecture off a state dict and loading it key by key, shape by shape.

Shared by the families' loaders: a checkpoint is untrusted input, so nothing is copied into a
network before every key and shape has been checked.
"""

import re

import torch
from torch import nn

from engine.layers.blocks import AntiAliasDownsample


class CheckpointError(ValueError):
    """The file is not a usable animation checkpoint; the message says why."""


def plain_array(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is what a saved weight is: its elements distinct, one after another in its
    storage (a permutation of the dims allowed) and inside it. A pickled tensor states its own
    size, strides and offset: stride 0 makes one stored float claim two billion parameters."""
    if tensor.numel() == 0:
        return True
    expected = 1
    for stride, size in sorted(
        (st, sz) for sz, st in zip(tensor.shape, tensor.stride(), strict=True) if sz != 1
    ):
        if stride != expected:
            return False
        expected *= size
    stored = tensor.untyped_storage().nbytes() // tensor.element_size()
    return tensor.storage_offset() + tensor.numel() <= stored


def check_tensors(data: object, name: str) -> None:
    """CheckpointError naming the first tensor in `data` (nested dicts, lists and tuples) that is not
    a plain array (plain_array); only the tensors' layouts are read, never their values."""
    pending: list[tuple[str, object]] = [("", data)]
    while pending:
        where, value = pending.pop()
        if isinstance(value, torch.Tensor):
            if not plain_array(value):
                shape = "x".join(map(str, value.shape))
                raise CheckpointError(
                    f"{name}: tensor {where or '(top level)'} claims {shape} values it does not store "
                    f"(strides {tuple(value.stride())}, {value.untyped_storage().nbytes()} bytes stored)"
                )
        elif isinstance(value, dict):
            pending += [(f"{where}.{key}" if where else str(key), item) for key, item in value.items()]
        elif isinstance(value, (list, tuple)):
            pending += [(f"{where}[{index}]", item) for index, item in enumerate(value)]


def count_blocks(state: dict, pattern: str) -> int:
    """How many blocks a numbered key pattern (one group, the index) matches; they must be 0..n-1."""
    regex = re.compile(pattern)
    indices = {int(m.group(1)) for key in state if (m := regex.fullmatch(key))}
    if indices != set(range(len(indices))):
        raise CheckpointError(f"blocks matching {pattern!r} are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def tensor_shape(state: dict, key: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"missing tensor {key!r}")
    return tuple(state[key].shape)


def antialias_scale(kernel: torch.Tensor) -> float:
    """Recover the downsampling scale 1/n from the stored anti-aliasing kernel.

    The kernel is a Gaussian (sigma = (n - 1) / 2) of 4 (n - 1) + 1 taps, so its size tells n; its
    values must then be that Gaussian's, within 2^-8 (some files round every weight to a grid).
    """
    size = kernel.shape[-1]
    if kernel.dim() != 4 or kernel.shape[1:3] != (1, size) or size < 5 or (size - 1) % 4:
        raise CheckpointError(
            f"the anti-aliasing kernel has shape {tuple(kernel.shape)}, not (C, 1, 4k+1, 4k+1)"
        )
    factor = (size - 1) // 4 + 1
    expected = AntiAliasDownsample(kernel.shape[0], 1 / factor).weight
    if float((kernel.double() - expected.double()).abs().max()) > 2**-8:
        raise CheckpointError(f"the anti-aliasing kernel is not the Gaussian of a 1/{factor} downsampling")
    return 1 / factor


def hourglass_params(state: dict, prefix: str) -> dict:
    """Depth, widths and input channels of an hourglass stored under `prefix`."""
    num_blocks = count_blocks(state, re.escape(prefix) + r"encoder\.down_blocks\.(\d+)\.conv\.weight")
    if num_blocks == 0:
        raise CheckpointError(f"no hourglass found under {prefix!r}")
    widths = [
        tensor_shape(state, f"{prefix}encoder.down_blocks.{i}.conv.weight")[0] for i in range(num_blocks)
    ]
    last_up = f"{prefix}decoder.up_blocks.{num_blocks - 1}.conv.weight"
    return {
        "num_blocks": num_blocks,
        "block_expansion": tensor_shape(state, last_up)[0],
        "max_features": max(widths),
        "in_features": tensor_shape(state, f"{prefix}encoder.down_blocks.0.conv.weight")[1],
    }


def load_state(module: nn.Module, state: dict, part: str) -> None:
    """Give `module` the tensors of `state` if it has exactly the module's keys and shapes; else say
    what differs. The module may be built on the meta device: its tensors become the file's (no
    copy where the dtypes already agree), in the module's dtypes."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else ""))
    if wrong:
        problems.append(f"wrong shape {', '.join(wrong[:5])}")
    if problems:
        raise CheckpointError(f"{part}: " + "; ".join(problems))
    module.load_state_dict({k: state[k].to(v.dtype) for k, v in expected.items()}, strict=True, assign=True)
