"""Loading checkpoints, published or our own, with every hyper-parameter read off the tensors.

A checkpoint is untrusted input: it is loaded with `weights_only=True` (no code runs), then checked
key by key and shape by shape before any weight is copied.
"""

import copy
import zipfile
from pathlib import Path

import torch
import yaml
from torch import nn

from worker.models import tpsmm
from worker.models.generator import Generator
from worker.models.keypoint_detector import KeypointDetector
from worker.models.state_dict import (
    CheckpointError,
    antialias_scale,
    count_blocks,
    hourglass_params,
    load_state,
    tensor_shape,
)

DEFAULT_FRAME_SHAPE = (256, 256)
# Hyper-parameters that leave no trace in the tensors; these are the published values.
DEFAULT_TEMPERATURE = 0.1
DEFAULT_KP_VARIANCE = 0.01


class AnimationModel(nn.Module):
    """A keypoint detector and a generator that belong together, with the frame size they expect."""

    family = "fomm"
    modes = ("relative", "absolute")  # motion transfer modes, the default first
    background_motion = False  # FOMM has no background motion predictor

    def __init__(self, kp_detector: KeypointDetector, generator: Generator, config: dict, frame_shape):
        super().__init__()
        self.kp_detector = kp_detector
        self.generator = generator
        self.config = config
        self.frame_shape = tuple(frame_shape)

    @property
    def num_kp(self) -> int:
        return self.config["common_params"]["num_kp"]


def infer_config(kp_state: dict, gen_state: dict) -> dict:
    """The published `model_params` structure, read off the two state dicts."""
    hourglass = hourglass_params(kp_state, "predictor.")
    num_channels = hourglass["in_features"]
    num_kp, kp_in, kernel, _ = tensor_shape(kp_state, "kp.weight")
    if kp_in != hourglass["block_expansion"] + num_channels:
        raise CheckpointError("kp_detector: the keypoint head does not match the hourglass output")
    kp_params = {
        "temperature": DEFAULT_TEMPERATURE,
        "block_expansion": hourglass["block_expansion"],
        "max_features": hourglass["max_features"],
        "num_blocks": hourglass["num_blocks"],
        "scale_factor": antialias_scale(kp_state["down.weight"]) if "down.weight" in kp_state else 1,
        "kernel_size": kernel,
    }
    estimate_jacobian = "jacobian.weight" in kp_state
    if estimate_jacobian:
        maps = tensor_shape(kp_state, "jacobian.weight")[0]
        if maps not in (4, 4 * num_kp):
            raise CheckpointError(f"kp_detector: {maps} jacobian channels fit neither 4 nor 4 x {num_kp}")
        kp_params["single_jacobian_map"] = maps == 4 and num_kp != 1

    first_out, first_in, _, _ = tensor_shape(gen_state, "first.conv.weight")
    num_down = count_blocks(gen_state, r"down_blocks\.(\d+)\.conv\.weight")
    widths = [first_out] + [
        tensor_shape(gen_state, f"down_blocks.{i}.conv.weight")[0] for i in range(num_down)
    ]
    gen_params: dict = {
        "block_expansion": first_out,
        "max_features": max(widths),
        "num_down_blocks": num_down,
        "num_bottleneck_blocks": count_blocks(gen_state, r"bottleneck\.r(\d+)\.conv1\.weight"),
        "estimate_occlusion_map": "dense_motion_network.occlusion.weight" in gen_state,
    }
    if first_in != num_channels:
        raise CheckpointError(f"generator takes {first_in} channels, kp_detector {num_channels}")
    if any(key.startswith("dense_motion_network.") for key in gen_state):
        motion = hourglass_params(gen_state, "dense_motion_network.hourglass.")
        mask_out = tensor_shape(gen_state, "dense_motion_network.mask.weight")[0]
        if mask_out != num_kp + 1:
            raise CheckpointError(f"dense motion mixes {mask_out} motions, expected {num_kp} + 1")
        if motion["in_features"] != (num_kp + 1) * (num_channels + 1):
            raise CheckpointError("dense motion input width does not match the keypoint count")
        down = gen_state.get("dense_motion_network.down.weight")
        gen_params["dense_motion_params"] = {
            "block_expansion": motion["block_expansion"],
            "max_features": motion["max_features"],
            "num_blocks": motion["num_blocks"],
            "scale_factor": antialias_scale(down) if down is not None else 1,
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


def _read_yaml(path: str | Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"config {path} is not a mapping")
    return data


def read_config(path: str | Path) -> dict:
    """`model_params` from a YAML file in the published config format (or the bare mapping)."""
    data = _read_yaml(path)
    return data.get("model_params", data)


def _frame_shape(path: Path, data: dict, config: dict | str | Path | None) -> tuple[int, int]:
    """The file's own frame size, else the config file's `dataset_params.frame_shape`, else 256x256.

    Published checkpoints do not store it, and TPSMM's ted-384 has the same tensors as vox-256.
    """
    frame_shape = data.get("frame_shape")
    if frame_shape is None and isinstance(config, (str, Path)):
        frame_shape = (_read_yaml(config).get("dataset_params") or {}).get("frame_shape")
    if frame_shape is None:
        frame_shape = DEFAULT_FRAME_SHAPE
    if not (
        isinstance(frame_shape, (list, tuple))
        and len(frame_shape) >= 2
        and all(isinstance(v, int) and 16 <= v <= 4096 for v in frame_shape[:2])
    ):
        raise CheckpointError(f"{path.name}: invalid frame_shape {frame_shape!r}")
    return tuple(frame_shape[:2])


def build_model(config: dict, frame_shape=DEFAULT_FRAME_SHAPE) -> AnimationModel:
    """Networks with fresh weights for a `model_params` config."""
    common = config["common_params"]
    try:
        kp_detector = KeypointDetector(**common, **config["kp_detector_params"])
        generator = Generator(**common, **config["generator_params"])
    except TypeError as exc:
        raise CheckpointError(f"invalid model config: {exc}") from exc
    return AnimationModel(kp_detector, generator, config, frame_shape)


def checkpoint_family(data: dict) -> str:
    """ "tpsmm" for the Thin-Plate Spline Motion Model's layout, "fomm" for the First Order Model's."""
    return "tpsmm" if "inpainting_network" in data or "dense_motion_network" in data else "fomm"


FAMILY_PARTS = {  # (required, optional) top-level state dicts; anything else in a file is never read
    "fomm": (("kp_detector", "generator"), ()),
    "tpsmm": (tpsmm.REQUIRED_PARTS, tpsmm.OPTIONAL_PARTS),
}


def _load_file(path: Path) -> tuple[str, dict[str, dict], dict]:
    """The family, its state dicts by part, and the file's other entries, every part checked to hold
    only tensors.

    Files in the zip format are memory-mapped, so optimizer states and other parts that are never
    used are never read into memory; only what the networks copy is.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except (zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as exc:
        raise CheckpointError(f"{path.name} is not a readable torch checkpoint ({exc})") from exc
    except Exception as exc:  # the unpickler raises many types for hostile or foreign files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path.name} is not a readable torch checkpoint ({reason})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name} holds a {type(data).__name__}, not a dict of state dicts")
    family = checkpoint_family(data)
    required, optional = FAMILY_PARTS[family]
    parts = {}
    for part in required + optional:
        state = data.get(part)
        if state is None and part in optional:
            continue
        if not isinstance(state, dict):
            raise CheckpointError(f"{path.name} has no {part!r} state dict")
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"{path.name}: {part}.{bad[0]} is not a tensor")
        parts[part] = state
    return family, parts, data


def _load_fomm(path: Path, parts: dict[str, dict], data: dict, config, frame_shape) -> AnimationModel:
    kp_state, gen_state = parts["kp_detector"], parts["generator"]
    try:
        inferred = infer_config(kp_state, gen_state)
    except (KeyError, IndexError) as exc:
        raise CheckpointError(f"{path.name}: unexpected layout ({exc})") from exc
    stored = data.get("config")
    if isinstance(stored, dict):
        inferred = _merge(inferred, stored)
    if config is not None:
        inferred = _merge(inferred, config if isinstance(config, dict) else read_config(config))
    model = build_model(inferred, frame_shape)
    load_state(model.kp_detector, kp_state, "kp_detector")
    load_state(model.generator, gen_state, "generator")
    return model


def load_checkpoint(
    path: str | Path, config: dict | str | Path | None = None, device: str = "cpu"
) -> "AnimationModel | tpsmm.TPSMModel":
    """Load a published or self-trained checkpoint, FOMM or TPSMM, into an eval-mode model.

    `config` (a `model_params` dict or a YAML path in the published format) overrides what the
    tensors cannot tell: FOMM's softmax temperature, keypoint variance and padding, and (from a
    YAML's `dataset_params.frame_shape`) the frame size of a file that does not store it. TPSMM's
    architecture is read off its tensors entirely.
    """
    path = Path(path)
    family, parts, data = _load_file(path)
    frame_shape = _frame_shape(path, data, config)
    if family == "tpsmm":
        model = tpsmm.load_model(parts, frame_shape)
    else:
        model = _load_fomm(path, parts, data, config, frame_shape)
    return model.to(device).eval()


def save_checkpoint(path: str | Path, model: "AnimationModel | tpsmm.TPSMModel", **extra) -> None:
    """Write the published layout (a state dict per network) plus our config and frame size, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            **{name: module.state_dict() for name, module in model.named_children()},
            "config": model.config,
            "frame_shape": list(model.frame_shape),
            **extra,
        },
        tmp,
    )
    tmp.replace(path)
