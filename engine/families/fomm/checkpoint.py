"""FOMM checkpoints, published or our own, with every hyper-parameter read off the tensors."""

from pathlib import Path

import torch

from engine.checkpoints import DEFAULT_FRAME_SHAPE, Checkpoint, merge_config, read_config, stored_frame_shape
from engine.families.fomm.generator import Generator
from engine.families.fomm.keypoint_detector import KeypointDetector
from engine.families.fomm.model import FirstOrderModel
from engine.state_dict import (
    CheckpointError,
    antialias_scale,
    count_blocks,
    hourglass_params,
    load_state,
    tensor_shape,
)

PARTS = ("kp_detector", "generator")  # the file's state dicts; anything else in it is never read
# Hyper-parameters that leave no trace in the tensors; these are the published values.
DEFAULT_TEMPERATURE = 0.1
DEFAULT_KP_VARIANCE = 0.01


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


def build_model(config: dict, frame_shape=DEFAULT_FRAME_SHAPE) -> FirstOrderModel:
    """Networks with fresh weights for a `model_params` config."""
    common = config["common_params"]
    try:
        kp_detector = KeypointDetector(**common, **config["kp_detector_params"])
        generator = Generator(**common, **config["generator_params"])
    except TypeError as exc:
        raise CheckpointError(f"invalid model config: {exc}") from exc
    return FirstOrderModel(kp_detector, generator, config, frame_shape)


def load_model(checkpoint: Checkpoint, config: dict | str | Path | None) -> FirstOrderModel:
    """A FirstOrderModel from a file's `kp_detector` and `generator` state dicts; the config stored in
    the file (our own training's) and then `config` override what the tensors tell."""
    parts = checkpoint.parts(PARTS)
    path, data = checkpoint.path, checkpoint.data
    frame_shape = stored_frame_shape(checkpoint, config)
    kp_state, gen_state = parts["kp_detector"], parts["generator"]
    try:
        inferred = infer_config(kp_state, gen_state)
    except (KeyError, IndexError) as exc:
        raise CheckpointError(f"{path.name}: unexpected layout ({exc})") from exc
    stored = data.get("config")
    if isinstance(stored, dict):
        inferred = merge_config(inferred, stored)
    if config is not None:
        inferred = merge_config(inferred, config if isinstance(config, dict) else read_config(config))
    with torch.device("meta"):  # no memory and no random initialisation for weights about to be replaced
        model = build_model(inferred, frame_shape)
    load_state(model.kp_detector, kp_state, "kp_detector")
    load_state(model.generator, gen_state, "generator")
    return model
