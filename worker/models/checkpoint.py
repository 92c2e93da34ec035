"""Loading checkpoints, published or our own, with every hyper-parameter read off the tensors.

A checkpoint is untrusted input: it is loaded with `weights_only=True` (no code runs), then checked
key by key and shape by shape before any weight is copied.
"""

import copy
import math
import re
import zipfile
from pathlib import Path

import torch
import yaml
from torch import nn

from worker.models.generator import Generator
from worker.models.keypoint_detector import KeypointDetector

DEFAULT_FRAME_SHAPE = (256, 256)
# Hyper-parameters that leave no trace in the tensors; these are the published values.
DEFAULT_TEMPERATURE = 0.1
DEFAULT_KP_VARIANCE = 0.01


class CheckpointError(ValueError):
    """The file is not a usable animation checkpoint; the message says why."""


class AnimationModel(nn.Module):
    """A keypoint detector and a generator that belong together, with the frame size they expect."""

    def __init__(self, kp_detector: KeypointDetector, generator: Generator, config: dict, frame_shape):
        super().__init__()
        self.kp_detector = kp_detector
        self.generator = generator
        self.config = config
        self.frame_shape = tuple(frame_shape)

    @property
    def num_kp(self) -> int:
        return self.config["common_params"]["num_kp"]


def _count(state: dict, pattern: str) -> int:
    regex = re.compile(pattern)
    indices = {int(m.group(1)) for key in state if (m := regex.fullmatch(key))}
    if indices != set(range(len(indices))):
        raise CheckpointError(f"blocks matching {pattern!r} are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def _shape(state: dict, key: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"missing tensor {key!r}")
    return tuple(state[key].shape)


def _antialias_scale(kernel: torch.Tensor) -> float:
    """Recover the downsampling scale from the stored Gaussian kernel (sigma = (1/scale - 1) / 2)."""
    size = kernel.shape[-1]
    centre = kernel[0, 0, size // 2].double()
    if size < 3 or not torch.all(centre > 0):
        raise CheckpointError("the anti-aliasing kernel is not a Gaussian")
    # Adjacent taps of a Gaussian: k[c+1] / k[c] = exp(-1 / (2 sigma^2)).
    ratio = float(centre[size // 2 + 1] / centre[size // 2])
    if not 0 < ratio < 1:
        raise CheckpointError("the anti-aliasing kernel is not a Gaussian")
    sigma = math.sqrt(-1 / (2 * math.log(ratio)))
    inverse = 2 * sigma + 1
    if abs(inverse - round(inverse)) > 1e-3:
        raise CheckpointError(f"the anti-aliasing kernel implies a non-integer factor 1/{inverse:.3f}")
    return 1 / round(inverse)


def _hourglass_params(state: dict, prefix: str) -> dict:
    num_blocks = _count(state, re.escape(prefix) + r"encoder\.down_blocks\.(\d+)\.conv\.weight")
    if num_blocks == 0:
        raise CheckpointError(f"no hourglass found under {prefix!r}")
    widths = [_shape(state, f"{prefix}encoder.down_blocks.{i}.conv.weight")[0] for i in range(num_blocks)]
    last_up = f"{prefix}decoder.up_blocks.{num_blocks - 1}.conv.weight"
    return {
        "num_blocks": num_blocks,
        "block_expansion": _shape(state, last_up)[0],
        "max_features": max(widths),
        "in_features": _shape(state, f"{prefix}encoder.down_blocks.0.conv.weight")[1],
    }


def infer_config(kp_state: dict, gen_state: dict) -> dict:
    """The published `model_params` structure, read off the two state dicts."""
    hourglass = _hourglass_params(kp_state, "predictor.")
    num_channels = hourglass["in_features"]
    num_kp, kp_in, kernel, _ = _shape(kp_state, "kp.weight")
    if kp_in != hourglass["block_expansion"] + num_channels:
        raise CheckpointError("kp_detector: the keypoint head does not match the hourglass output")
    kp_params = {
        "temperature": DEFAULT_TEMPERATURE,
        "block_expansion": hourglass["block_expansion"],
        "max_features": hourglass["max_features"],
        "num_blocks": hourglass["num_blocks"],
        "scale_factor": _antialias_scale(kp_state["down.weight"]) if "down.weight" in kp_state else 1,
        "kernel_size": kernel,
    }
    estimate_jacobian = "jacobian.weight" in kp_state
    if estimate_jacobian:
        maps = _shape(kp_state, "jacobian.weight")[0]
        if maps not in (4, 4 * num_kp):
            raise CheckpointError(f"kp_detector: {maps} jacobian channels fit neither 4 nor 4 x {num_kp}")
        kp_params["single_jacobian_map"] = maps == 4 and num_kp != 1

    first_out, first_in, _, _ = _shape(gen_state, "first.conv.weight")
    num_down = _count(gen_state, r"down_blocks\.(\d+)\.conv\.weight")
    widths = [first_out] + [_shape(gen_state, f"down_blocks.{i}.conv.weight")[0] for i in range(num_down)]
    gen_params: dict = {
        "block_expansion": first_out,
        "max_features": max(widths),
        "num_down_blocks": num_down,
        "num_bottleneck_blocks": _count(gen_state, r"bottleneck\.r(\d+)\.conv1\.weight"),
        "estimate_occlusion_map": "dense_motion_network.occlusion.weight" in gen_state,
    }
    if first_in != num_channels:
        raise CheckpointError(f"generator takes {first_in} channels, kp_detector {num_channels}")
    if any(key.startswith("dense_motion_network.") for key in gen_state):
        motion = _hourglass_params(gen_state, "dense_motion_network.hourglass.")
        mask_out = _shape(gen_state, "dense_motion_network.mask.weight")[0]
        if mask_out != num_kp + 1:
            raise CheckpointError(f"dense motion mixes {mask_out} motions, expected {num_kp} + 1")
        if motion["in_features"] != (num_kp + 1) * (num_channels + 1):
            raise CheckpointError("dense motion input width does not match the keypoint count")
        down = gen_state.get("dense_motion_network.down.weight")
        gen_params["dense_motion_params"] = {
            "block_expansion": motion["block_expansion"],
            "max_features": motion["max_features"],
            "num_blocks": motion["num_blocks"],
            "scale_factor": _antialias_scale(down) if down is not None else 1,
            "kp_variance": DEFAULT_KP_VARIANCE,
        }
    return {
        "common_params": {
            "num_kp": num_kp,
            "num_channels": num_channels,
            "estimate_jacobian": estimate_jacobian,
        },
        "kp_detector_params": kp_params,
        "generator_params": gen_params,
    }


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config(path: str | Path) -> dict:
    """`model_params` from a YAML file in the published config format (or the bare mapping)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"config {path} is not a mapping")
    return data.get("model_params", data)


def build_model(config: dict, frame_shape=DEFAULT_FRAME_SHAPE) -> AnimationModel:
    """Networks with fresh weights for a `model_params` config."""
    common = config["common_params"]
    try:
        kp_detector = KeypointDetector(**common, **config["kp_detector_params"])
        generator = Generator(**common, **config["generator_params"])
    except TypeError as exc:
        raise CheckpointError(f"invalid model config: {exc}") from exc
    return AnimationModel(kp_detector, generator, config, frame_shape)


def _torch_load(path: Path) -> object:
    """torch.load with weights_only; memory-mapped (tensors read from the page cache as they are
    used, no second copy) unless the file is in the legacy, non-zip format, which cannot be mapped."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_file(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = _torch_load(path)
    except (zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as exc:
        raise CheckpointError(f"{path.name} is not a readable torch checkpoint ({exc})") from exc
    except Exception as exc:  # the unpickler raises many types for hostile or foreign files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path.name} is not a readable torch checkpoint ({reason})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name} holds a {type(data).__name__}, not a dict of state dicts")
    for part in ("kp_detector", "generator"):
        state = data.get(part)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path.name} has no {part!r} state dict")
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"{path.name}: {part}.{bad[0]} is not a tensor")
    return data


def _load_state(module: nn.Module, state: dict, part: str) -> None:
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
    # The module was built on the meta device: its tensors become the file's, in the module's dtypes.
    module.load_state_dict({k: state[k].to(v.dtype) for k, v in expected.items()}, strict=True, assign=True)


def load_checkpoint(
    path: str | Path, config: dict | str | Path | None = None, device: str = "cpu"
) -> AnimationModel:
    """Load a published or self-trained checkpoint into an eval-mode `AnimationModel`.

    `config` (a `model_params` dict or a YAML path) overrides what is inferred from the tensors.
    """
    path = Path(path)
    data = _load_file(path)
    kp_state, gen_state = data["kp_detector"], data["generator"]
    try:
        inferred = infer_config(kp_state, gen_state)
    except (KeyError, IndexError) as exc:
        raise CheckpointError(f"{path.name}: unexpected layout ({exc})") from exc
    stored = data.get("config")
    if isinstance(stored, dict):
        inferred = _merge(inferred, stored)
    if config is not None:
        inferred = _merge(inferred, config if isinstance(config, dict) else read_config(config))
    frame_shape = data.get("frame_shape", DEFAULT_FRAME_SHAPE)
    if not (
        isinstance(frame_shape, (list, tuple))
        and len(frame_shape) >= 2
        and all(isinstance(v, int) and 16 <= v <= 4096 for v in frame_shape[:2])
    ):
        raise CheckpointError(f"{path.name}: invalid frame_shape {frame_shape!r}")
    with torch.device("meta"):  # no memory and no random initialisation for weights about to be replaced
        model = build_model(inferred, frame_shape[:2])
    _load_state(model.kp_detector, kp_state, "kp_detector")
    _load_state(model.generator, gen_state, "generator")
    return model.to(device).eval()


def save_checkpoint(path: str | Path, model: AnimationModel, **extra) -> None:
    """Write the published layout plus our config and frame size, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "kp_detector": model.kp_detector.state_dict(),
            "generator": model.generator.state_dict(),
            "config": model.config,
            "frame_shape": list(model.frame_shape),
            **extra,
        },
        tmp,
    )
    tmp.replace(path)
