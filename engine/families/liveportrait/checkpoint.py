"""LivePortrait's published folder: recognised, read off its tensors, checked, loaded, described.

The folder as users download it (optionally under a `liveportrait/` parent) holds
`base_models/{appearance_feature_extractor,motion_extractor,warping_module,spade_generator}.pth`,
one flat state dict each, and `retargeting_models/stitching_retargeting_module.pth`, a dict whose
entries `retarget_shoulder`, `retarget_mouth` and `retarget_eye` are the state dicts of the
stitching, lip and eye MLPs (keys possibly prefixed `module.`); the rest of that file is not read.
Every file is untrusted: loaded with `weights_only=True`, memory-mapped, and checked key by key
and shape by shape before any tensor is used. Widths, depths and the keypoint count are read off
the tensors; a `models.yaml` in the published layout may override what they cannot tell, and
its top-level `input_shape: [H, W]` (ours, not published) gives the crop size the networks take
(default the published 256x256).
"""

import copy
import zipfile
from pathlib import Path

import torch
import yaml

from engine.families.liveportrait.appearance_feature_extractor import AppearanceFeatureExtractor
from engine.families.liveportrait.config import check_agreement, infer_config
from engine.families.liveportrait.model import PUBLISHED_INPUT_SHAPE, LivePortraitModel
from engine.families.liveportrait.motion_extractor import MotionExtractor
from engine.families.liveportrait.spade_generator import SPADEDecoder
from engine.families.liveportrait.stitching_retargeting import PART_ENTRIES, stitching_retargeting_module
from engine.families.liveportrait.warping_network import WarpingNetwork
from engine.state_dict import CheckpointError, load_state, tensor_shape

BASE_PARTS = ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator")
BASE_DIR = "base_models"
STITCHING_FILE = Path("retargeting_models") / "stitching_retargeting_module.pth"
CONFIG_FILE = "models.yaml"
# The published constructors' keyword arguments, taken from the config (anything else in it is not ours).
AFE_KEYS = ("image_channel", "block_expansion", "num_down_blocks", "max_features", "reshape_channel")
AFE_KEYS += ("reshape_depth", "num_resblocks")
WARP_KEYS = ("num_kp", "block_expansion", "max_features", "num_down_blocks", "reshape_channel")
WARP_KEYS += ("estimate_occlusion_map", "dense_motion_params", "flag_use_occlusion_map")
SPADE_KEYS = ("upscale", "max_features", "block_expansion", "out_channels", "num_down_blocks")


def find_root(folder: str | Path) -> Path | None:
    """The directory holding `base_models/`: the folder itself or its `liveportrait/`; else None."""
    folder = Path(folder)
    for root in (folder, folder / "liveportrait"):
        if (root / BASE_DIR).is_dir():
            return root
    return None


def is_liveportrait_folder(path: str | Path) -> bool:
    """Whether `path` is laid out as the published LivePortrait folder (cheap: names only, nothing read)."""
    root = find_root(path) if Path(path).is_dir() else None
    return root is not None and any((root / BASE_DIR / f"{part}.pth").is_file() for part in BASE_PARTS)


def _read(path: Path, root: Path) -> object:
    name = str(path.relative_to(root))
    if not path.is_file():
        raise CheckpointError(f"{name} is missing from the LivePortrait folder {root}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # the unpickler raises many types for hostile or foreign files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{name} is not a readable torch checkpoint ({reason})") from exc


def _state_dict(data: object, name: str) -> dict[str, torch.Tensor]:
    if not isinstance(data, dict) or not data:
        raise CheckpointError(f"{name} holds a {type(data).__name__}, not a state dict")
    bad = [k for k, v in data.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise CheckpointError(f"{name}: {bad[0]!r} is not a named tensor")
    return dict(data)


def read_parts(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The state dicts of the four base networks and of the "stitching", "lip" and "eye" MLPs."""
    parts = {part: _state_dict(_read(root / BASE_DIR / f"{part}.pth", root), part) for part in BASE_PARTS}
    stitching = _read(root / STITCHING_FILE, root)
    if not isinstance(stitching, dict):
        raise CheckpointError(
            f"{STITCHING_FILE} holds a {type(stitching).__name__}, not a dict of state dicts"
        )
    for part, entry in PART_ENTRIES.items():
        state = _state_dict(stitching.get(entry), f"{STITCHING_FILE}[{entry!r}]")
        parts[part] = {key.replace("module.", ""): value for key, value in state.items()}
    return parts


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config(path: Path) -> dict:
    """`model_params` of a models.yaml in the published layout."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CheckpointError(f"cannot read {path.name}: {exc}") from exc
    params = data.get("model_params", data) if isinstance(data, dict) else None
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise CheckpointError(
            f"{path.name} is not a LivePortrait models.yaml (model_params: name -> mapping)"
        )
    return params


def read_input_shape(path: Path, multiple: int) -> tuple[int, int]:
    """The folder's `input_shape` ([H, W], multiples of `multiple`) from its models.yaml, else 256x256."""
    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    shape = data.get("input_shape") if isinstance(data, dict) else None
    if shape is None:
        return PUBLISHED_INPUT_SHAPE
    if not (
        isinstance(shape, list)
        and len(shape) == 2
        and all(isinstance(v, int) and 16 <= v <= 4096 and v % multiple == 0 for v in shape)
    ):
        raise CheckpointError(f"{path.name}: input_shape {shape!r} is not [H, W], multiples of {multiple}")
    return tuple(shape)


def _model_params(parts: dict[str, dict], config: dict | str | Path | None) -> dict:
    """The config read off the tensors, overridden by `config`; its networks checked to fit together."""
    params = infer_config(parts)
    if config is not None:
        params = _merge(params, config if isinstance(config, dict) else read_config(Path(config)))
    try:
        check_agreement(params)
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"invalid LivePortrait model config: {type(exc).__name__}: {exc}") from exc
    return params


def build_model(
    config: dict, spade_hidden: int = 128, input_shape=PUBLISHED_INPUT_SHAPE
) -> LivePortraitModel:
    """Networks with fresh weights for a published-layout `model_params` config."""
    afe, motion = config["appearance_feature_extractor_params"], config["motion_extractor_params"]
    warp, spade = config["warping_module_params"], config["spade_generator_params"]
    try:
        networks = (
            AppearanceFeatureExtractor(**{k: afe[k] for k in AFE_KEYS}),
            MotionExtractor(motion["num_kp"], list(motion["depths"]), list(motion["dims"])),
            WarpingNetwork(**{k: warp[k] for k in WARP_KEYS if k in warp}),
            SPADEDecoder(**{k: spade[k] for k in SPADE_KEYS}, hidden=spade_hidden),
            stitching_retargeting_module(config["stitching_retargeting_module_params"]),
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"invalid LivePortrait model config: {type(exc).__name__}: {exc}") from exc
    return LivePortraitModel(*networks, config=config, input_shape=input_shape)


def load_liveportrait(
    folder: str | Path, device: str = "cpu", config: dict | str | Path | None = None
) -> LivePortraitModel:
    """An eval-mode LivePortraitModel from the published folder. `config`: a `model_params` dict
    or models.yaml path; by default the folder's own models.yaml where there is one."""
    root = find_root(folder)
    if root is None:
        raise CheckpointError(
            f"{folder} is not a LivePortrait folder (no {BASE_DIR}/ in it or in liveportrait/)"
        )
    parts = read_parts(root)
    if config is None and (root / CONFIG_FILE).is_file():
        config = root / CONFIG_FILE
    hidden = tensor_shape(parts["spade_generator"], "G_middle_0.norm_0.mlp_shared.0.weight")[0]
    with torch.device("meta"):  # no memory and no random initialisation for weights about to be replaced
        model = build_model(_model_params(parts, config), spade_hidden=hidden)
    with torch.no_grad():
        for part in BASE_PARTS:
            load_state(getattr(model, part), parts[part], part)
        for part, entry in PART_ENTRIES.items():
            load_state(model.stitching_retargeting_module[part], parts[part], f"{STITCHING_FILE}[{entry!r}]")
    model.input_shape = read_input_shape(root / CONFIG_FILE, model.size_multiple)
    return model.to(device).eval()


def save_liveportrait(model: LivePortraitModel, folder: str | Path) -> None:
    """Write the published layout (and the config as models.yaml) into `folder`, file by file atomically."""
    root = Path(folder)
    files = {Path(BASE_DIR) / f"{part}.pth": getattr(model, part).state_dict() for part in BASE_PARTS}
    files[STITCHING_FILE] = {
        entry: {f"module.{k}": v for k, v in model.stitching_retargeting_module[part].state_dict().items()}
        for part, entry in PART_ENTRIES.items()
    }
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data, path.with_name(path.name + ".tmp"))
        path.with_name(path.name + ".tmp").replace(path)
    (root / CONFIG_FILE).write_text(
        yaml.safe_dump(
            {"model_params": model.config, "input_shape": list(model.input_shape)}, sort_keys=False
        )
    )


def describe(model: LivePortraitModel) -> dict:
    """What `animate inspect` shows: parts and parameter counts, keypoints, widths, sizes."""
    parts = {part: getattr(model, part) for part in BASE_PARTS}
    parts |= {f"stitching_retargeting_module.{k}": v for k, v in model.stitching_retargeting_module.items()}
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}
    afe = model.config["appearance_feature_extractor_params"]
    return {
        "family": model.family,
        "num_kp": model.num_kp,
        "feature_volume": {"channels": afe["reshape_channel"], "depth": afe["reshape_depth"]},
        "input_shape": list(model.input_shape),
        "output_shape": list(model.output_shape()),
        "size_multiple": model.size_multiple,
        "parameters": counts,
        "total_parameters": sum(counts.values()),
        "model_params": model.config,
    }


def describe_liveportrait(folder: str | Path) -> dict:
    """`describe` of the folder's model, loaded memory-mapped (nothing is computed)."""
    return describe(load_liveportrait(folder))
