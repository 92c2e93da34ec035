"""LivePortrait (Guo et al., 2024): the published checkpoints with our own networks, under the
published names and call signatures, so each piece can be compared with the original."""

from engine.families.liveportrait.camera import get_rotation_matrix, headpose_pred_to_degree
from engine.families.liveportrait.checkpoint import (
    build_model,
    describe,
    describe_liveportrait,
    find_root,
    is_liveportrait_folder,
    load_liveportrait,
    save_liveportrait,
)
from engine.families.liveportrait.config import infer_config
from engine.families.liveportrait.model import LivePortraitModel, prepare_images
from engine.families.liveportrait.motion import calc_motion_multiplier, transfer_motion
from engine.families.liveportrait.regions import REGIONS, calc_eye_close_ratio, calc_lip_close_ratio

__all__ = [
    "REGIONS",
    "LivePortraitModel",
    "build_model",
    "calc_eye_close_ratio",
    "calc_lip_close_ratio",
    "calc_motion_multiplier",
    "describe",
    "describe_liveportrait",
    "find_root",
    "get_rotation_matrix",
    "headpose_pred_to_degree",
    "infer_config",
    "is_liveportrait_folder",
    "load_liveportrait",
    "prepare_images",
    "save_liveportrait",
    "transfer_motion",
]
