"""LivePortrait's architecture read off its tensors, as the published `model_params` structure.

Everything that shapes a tensor is read; what no tensor tells is given the published value: the
split of W's and G's output width into block_expansion * 2^num_down_blocks (only the product
matters; the published 2 halvings), G's max_features (it never binds; the published yaml gives
it W's value) and W's flag_use_occlusion_map (on). The networks must agree with each other (keypoint
count, feature volume, widths passed between them); where they do not, the error says which.
"""

import re

from engine.families.liveportrait.camera import NUM_BINS
from engine.state_dict import CheckpointError, count_blocks, hourglass_params, tensor_shape

IMAGE_CHANNELS = 3  # both encoders take the RGB crop
TINY = ([3, 3, 9, 3], [96, 192, 384, 768])  # the published convnextv2_tiny, the only named backbone
PUBLISHED_DOWN_BLOCKS = 2


def _split_width(width: int) -> tuple[int, int]:
    """(block_expansion, num_down_blocks) for a width: the published 2 halvings where they divide it."""
    factor = 2**PUBLISHED_DOWN_BLOCKS
    return (width // factor, PUBLISHED_DOWN_BLOCKS) if width % factor == 0 else (width, 0)


def _afe_params(state: dict, volume_channels: int) -> dict:
    """`volume_channels`: the warping module's; the 3-D blocks tell them too, where there are any."""
    channels, image_channel = tensor_shape(state, "first.conv.weight")[:2]
    if image_channel != IMAGE_CHANNELS:
        raise CheckpointError(f"appearance_feature_extractor takes {image_channel} channels, not RGB")
    max_features = tensor_shape(state, "second.weight")[0]
    num_resblocks = count_blocks(state, r"resblocks_3d\.3dr(\d+)\.conv1\.weight")
    reshape_channel = (
        tensor_shape(state, "resblocks_3d.3dr0.conv1.weight")[0] if num_resblocks else volume_channels
    )
    if max_features % reshape_channel:
        raise CheckpointError(
            f"appearance_feature_extractor: {max_features} channels do not fold into {reshape_channel}"
        )
    return {
        "image_channel": image_channel,
        "block_expansion": channels,
        "num_down_blocks": count_blocks(state, r"down_blocks\.(\d+)\.conv\.weight"),
        "max_features": max_features,
        "reshape_channel": reshape_channel,
        "reshape_depth": max_features // reshape_channel,
        "num_resblocks": num_resblocks,
    }


def _motion_params(state: dict) -> dict:
    stages = count_blocks(state, r"detector\.downsample_layers\.(\d+)\.0\.weight")
    if stages == 0:
        raise CheckpointError("motion_extractor: no ConvNeXt-V2 stages under detector.")
    dims = [tensor_shape(state, "detector.downsample_layers.0.0.weight")[0]]
    dims += [tensor_shape(state, f"detector.downsample_layers.{i}.1.weight")[0] for i in range(1, stages)]
    depths = [count_blocks(state, rf"detector\.stages\.{i}\.(\d+)\.dwconv\.weight") for i in range(stages)]
    kp_out, exp_out = (
        tensor_shape(state, "detector.fc_kp.weight")[0],
        tensor_shape(state, "detector.fc_exp.weight")[0],
    )
    bins = tensor_shape(state, "detector.fc_pitch.weight")[0]
    in_chans = tensor_shape(state, "detector.downsample_layers.0.0.weight")[1]
    if kp_out % 3 or exp_out != kp_out:
        raise CheckpointError(
            f"motion_extractor: {kp_out} keypoint and {exp_out} expression outputs are not K x 3 each"
        )
    if bins != NUM_BINS or in_chans != IMAGE_CHANNELS:
        raise CheckpointError(
            f"motion_extractor: {bins} pose bins and {in_chans} input channels "
            f"(LivePortrait's pose is {NUM_BINS} bins of 3 degrees, its input RGB)"
        )
    backbone = "convnextv2_tiny" if (depths, dims) == TINY else "convnextv2"
    return {"num_kp": kp_out // 3, "backbone": backbone, "depths": depths, "dims": dims}


def _warping_params(state: dict) -> dict:
    prefix = "dense_motion_network."
    hourglass = hourglass_params(state, prefix + "hourglass.")
    num_kp = tensor_shape(state, prefix + "mask.weight")[0] - 1
    compress, feature_channel = tensor_shape(state, prefix + "compress.weight")[:2]
    if hourglass["in_features"] != (num_kp + 1) * (compress + 1):
        raise CheckpointError(f"warping_module: the hourglass input does not match {num_kp} keypoints")
    out_filters = hourglass["block_expansion"] + hourglass["in_features"]
    occlusion = prefix + "occlusion.weight" in state
    folded = tensor_shape(state, prefix + "occlusion.weight")[1] if occlusion else None
    out_features, max_features = tensor_shape(state, "third.conv.weight")[:2]
    if max_features % feature_channel or (folded is not None and folded % out_filters):
        raise CheckpointError("warping_module: its feature volume does not fold into its 2-D widths")
    block_expansion, num_down_blocks = _split_width(out_features)
    dense = {k: hourglass[k] for k in ("block_expansion", "max_features", "num_blocks")}
    dense["reshape_depth"] = folded // out_filters if occlusion else max_features // feature_channel
    dense["compress"] = compress
    return {
        "num_kp": num_kp,
        "block_expansion": block_expansion,
        "max_features": max_features,
        "num_down_blocks": num_down_blocks,
        "reshape_channel": feature_channel,
        "estimate_occlusion_map": occlusion,
        "dense_motion_params": dense,
    }


def _spade_params(state: dict, warp_max_features: int) -> dict:
    doubled, channels = tensor_shape(state, "fc.weight")[:2]
    if doubled != 2 * channels:
        raise CheckpointError(f"spade_generator: fc maps {channels} to {doubled} channels, not twice as many")
    block_expansion, num_down_blocks = _split_width(channels)
    return {
        "upscale": 2 if "conv_img.0.weight" in state else 1,
        "block_expansion": block_expansion,
        "max_features": max(warp_max_features, channels),
        "num_down_blocks": num_down_blocks,
        "out_channels": tensor_shape(state, "up_1.conv_1.weight_orig")[0],
    }


def _mlp_params(state: dict, name: str) -> dict:
    indices = sorted(int(m.group(1)) for key in state if (m := re.fullmatch(r"mlp\.(\d+)\.weight", key)))
    if not indices or indices != list(range(0, 2 * len(indices), 2)):
        raise CheckpointError(f"{name}: linear layers {indices}, expected mlp.0, mlp.2, ...")
    sizes = [tensor_shape(state, f"mlp.{i}.weight")[0] for i in indices]
    return {
        "input_size": tensor_shape(state, "mlp.0.weight")[1],
        "hidden_sizes": sizes[:-1],
        "output_size": sizes[-1],
    }


def check_agreement(config: dict) -> None:
    """Refuse a config whose networks do not fit together, saying where."""
    afe, motion = config["appearance_feature_extractor_params"], config["motion_extractor_params"]
    warp, spade = config["warping_module_params"], config["spade_generator_params"]
    k = motion["num_kp"]
    volume = (afe["reshape_channel"], afe["reshape_depth"], afe["max_features"])
    checks = [
        (warp["num_kp"] == k, f"warping_module moves {warp['num_kp']} keypoints, motion_extractor finds {k}"),
        (
            (warp["reshape_channel"], warp["dense_motion_params"]["reshape_depth"], warp["max_features"])
            == volume,
            "warping_module's feature volume is not the appearance_feature_extractor's",
        ),
        (
            warp["block_expansion"] * 2 ** warp["num_down_blocks"]
            == spade["block_expansion"] * 2 ** spade["num_down_blocks"],
            "spade_generator does not take the warping_module's output width",
        ),
    ]
    mlps = config["stitching_retargeting_module_params"]
    expected = {"stitching": (6 * k, 3 * k + 2), "lip": (3 * k + 2, 3 * k), "eye": (3 * k + 3, 3 * k)}
    for name, (size_in, size_out) in expected.items():
        found = (mlps[name]["input_size"], mlps[name]["output_size"])
        checks.append(
            (
                found == (size_in, size_out),
                f"the {name} MLP maps {found[0]} to {found[1]}, not {size_in} to {size_out} ({k} keypoints)",
            )
        )
    for ok, message in checks:
        if not ok:
            raise CheckpointError(message)


def infer_config(parts: dict[str, dict]) -> dict:
    """The published `model_params` from the parts' state dicts (`checkpoint.read_parts`)."""
    try:
        warp = _warping_params(parts["warping_module"])
        config = {
            "appearance_feature_extractor_params": _afe_params(
                parts["appearance_feature_extractor"], warp["reshape_channel"]
            ),
            "motion_extractor_params": _motion_params(parts["motion_extractor"]),
            "warping_module_params": warp,
            "spade_generator_params": _spade_params(parts["spade_generator"], warp["max_features"]),
            "stitching_retargeting_module_params": {
                name: _mlp_params(parts[name], name) for name in ("stitching", "lip", "eye")
            },
        }
    except (KeyError, IndexError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"unexpected LivePortrait layout ({exc})") from exc
    return config
