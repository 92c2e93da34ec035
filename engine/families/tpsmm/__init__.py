"""The Thin-Plate Spline Motion Model (Zhao and Zhang, CVPR 2022): networks under their published
names and call signatures, so each can be compared with the original piece by piece."""

from engine.families.tpsmm.avd import AVDNetwork
from engine.families.tpsmm.background import BackgroundMotionPredictor
from engine.families.tpsmm.checkpoint import (
    OPTIONAL_PARTS,
    REQUIRED_PARTS,
    build_model,
    infer_config,
    load_model,
)
from engine.families.tpsmm.dense_motion import DenseMotionNetwork
from engine.families.tpsmm.inpainting import InpaintingNetwork
from engine.families.tpsmm.keypoint_detector import KeypointDetector
from engine.families.tpsmm.model import TPSMModel
from engine.families.tpsmm.motion_transfer import relative_kp

__all__ = [
    "OPTIONAL_PARTS",
    "REQUIRED_PARTS",
    "AVDNetwork",
    "BackgroundMotionPredictor",
    "DenseMotionNetwork",
    "InpaintingNetwork",
    "KeypointDetector",
    "TPSMModel",
    "build_model",
    "infer_config",
    "load_model",
    "relative_kp",
]
