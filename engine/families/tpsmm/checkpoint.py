"""TPSMM checkpoints: the architecture read off the tensors, then every part checked key by key.

The published files hold the state dicts under `kp_detector`, `dense_motion_network`,
`inpainting_network`, `avd_network` and, when trained with background motion, `bg_predictor`;
everything else in them (optimizer states, epoch) is left unread.
"""

import torch

from engine.families.tpsmm.avd import AVDNetwork
from engine.families.tpsmm.background import BackgroundMotionPredictor
from engine.families.tpsmm.dense_motion import OCCLUSION_MAPS, DenseMotionNetwork
from engine.families.tpsmm.inpainting import InpaintingNetwork
from engine.families.tpsmm.keypoint_detector import POINTS_PER_TPS, KeypointDetector
from engine.families.tpsmm.model import TPSMModel
from engine.state_dict import (
    CheckpointError,
    antialias_scale,
    count_blocks,
    hourglass_params,
    load_state,
    tensor_shape,
)

REQUIRED_PARTS = ("kp_detector", "dense_motion_network", "inpainting_network")
OPTIONAL_PARTS = ("avd_network", "bg_predictor")
DEFAULT_KP_VARIANCE = 0.01  # leaves no trace in the tensors; the published value


def _dense_motion_params(state: dict, num_tps: int, num_channels: int) -> dict:
    hourglass = hourglass_params(state, "hourglass.")
    if hourglass["in_features"] != num_channels * (num_tps + 1) + POINTS_PER_TPS * num_tps + 1:
        raise CheckpointError("dense_motion_network: the hourglass input does not match the keypoint count")
    if tensor_shape(state, "maps.weight")[0] != num_tps + 1:
        raise CheckpointError(f"dense_motion_network: contribution maps do not mix {num_tps} + 1 motions")
    masks = count_blocks(state, r"occlusion\.(\d+)\.weight")
    if masks != OCCLUSION_MAPS:
        raise CheckpointError(
            f"dense_motion_network: {masks} occlusion masks; only the published multi-resolution "
            f"design ({OCCLUSION_MAPS}) is supported"
        )
    scale = antialias_scale(state["down.weight"]) if "down.weight" in state else 1
    if scale != 2.0 ** -count_blocks(state, r"up\.(\d+)\.conv\.weight"):
        raise CheckpointError(
            f"dense_motion_network: its up blocks do not undo the 1/{round(1 / scale)} scale"
        )
    return {
        "block_expansion": hourglass["block_expansion"],
        "max_features": hourglass["max_features"],
        "num_blocks": hourglass["num_blocks"],
        "scale_factor": scale,
    }


def _generator_params(state: dict, num_channels: int) -> dict:
    first_out, first_in, _, _ = tensor_shape(state, "first.conv.weight")
    if first_in != num_channels:
        raise CheckpointError(f"inpainting_network takes {first_in} channels, kp_detector {num_channels}")
    num_down = count_blocks(state, r"down_blocks\.(\d+)\.conv\.weight")
    if num_down + 1 != OCCLUSION_MAPS:
        raise CheckpointError(
            f"inpainting_network: {num_down} down blocks; the occlusion masks need {OCCLUSION_MAPS - 1}"
        )
    widths = [first_out] + [tensor_shape(state, f"down_blocks.{i}.conv.weight")[0] for i in range(num_down)]
    return {"block_expansion": first_out, "max_features": max(widths), "num_down_blocks": num_down}


def infer_config(parts: dict[str, dict]) -> dict:
    """The published `model_params` structure, read off the parts' state dicts."""
    kp_state = parts["kp_detector"]
    outputs = tensor_shape(kp_state, "fg_encoder.fc.weight")[0]
    if outputs % (2 * POINTS_PER_TPS):
        raise CheckpointError(f"kp_detector: {outputs} outputs are not 5 (x, y) points per transform")
    num_tps = outputs // (2 * POINTS_PER_TPS)
    num_channels = tensor_shape(kp_state, "fg_encoder.conv1.weight")[1]
    config = {
        "common_params": {
            "num_tps": num_tps,
            "num_channels": num_channels,
            "bg": "bg_predictor" in parts,
            "multi_mask": True,
        },
        "generator_params": _generator_params(parts["inpainting_network"], num_channels),
        "dense_motion_params": _dense_motion_params(parts["dense_motion_network"], num_tps, num_channels),
    }
    if "avd_network" in parts:
        avd = parts["avd_network"]
        if tensor_shape(avd, "id_encoder.0.weight")[1] != 2 * POINTS_PER_TPS * num_tps:
            raise CheckpointError("avd_network: its input does not match the keypoint count")
        config["avd_network_params"] = {
            "id_bottle_size": tensor_shape(avd, "id_encoder.9.weight")[0],
            "pose_bottle_size": tensor_shape(avd, "pose_encoder.9.weight")[0],
        }
    if (
        "bg_predictor" in parts
        and tensor_shape(parts["bg_predictor"], "bg_encoder.conv1.weight")[1] != 2 * num_channels
    ):
        raise CheckpointError("bg_predictor: its first convolution does not take source and driving stacked")
    return config


def build_model(config: dict, frame_shape, avd_trained: bool = True) -> TPSMModel:
    """Networks with fresh weights for a `model_params` config; AVD network when the config has its
    parameters, background predictor when `common_params.bg`."""
    common = config["common_params"]
    num_tps, num_channels = common["num_tps"], common["num_channels"]
    dense = {"kp_variance": DEFAULT_KP_VARIANCE, **config["dense_motion_params"]}
    avd_params = config.get("avd_network_params")
    return TPSMModel(
        KeypointDetector(num_tps, num_channels),
        DenseMotionNetwork(num_tps=num_tps, num_channels=num_channels, **dense),
        InpaintingNetwork(num_channels, **config["generator_params"]),
        AVDNetwork(num_tps, **avd_params) if avd_params is not None else None,
        BackgroundMotionPredictor(num_channels) if common["bg"] else None,
        config,
        frame_shape,
        avd_trained,
    )


def _has_seen_batches(state: dict) -> bool:
    return any(int(v) > 0 for k, v in state.items() if k.endswith("num_batches_tracked"))


def load_model(parts: dict[str, dict], frame_shape) -> TPSMModel:
    """An eval-mode TPSMModel from the parts' state dicts (the published names as keys)."""
    try:
        config = infer_config(parts)
    except (KeyError, IndexError) as exc:
        raise CheckpointError(f"unexpected layout ({exc})") from exc
    avd_trained = "avd_network" in parts and _has_seen_batches(parts["avd_network"])
    with torch.device("meta"):  # no memory and no random initialisation for weights about to be replaced
        model = build_model(config, frame_shape, avd_trained)
    multiple = model.size_multiple
    if any(side % multiple for side in model.frame_shape):
        raise CheckpointError(f"frame_shape {list(model.frame_shape)} is not a multiple of {multiple}")
    with torch.no_grad():
        for name, module in model.named_children():
            load_state(module, parts[name], name)
    return model.eval()
