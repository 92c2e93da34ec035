"""The Thin-Plate Spline Motion Model (Zhao and Zhang, CVPR 2022): networks under their published
names and call signatures, so each can be compared with the original piece by piece."""

from worker.models.tpsmm.avd import AVDNetwork
from worker.models.tpsmm.background import BackgroundMotionPredictor
from worker.models.tpsmm.checkpoint import (
    OPTIONAL_PARTS,
    REQUIRED_PARTS,
    build_model,
    infer_config,
    load_model,
)
from worker.models.tpsmm.dense_motion import DenseMotionNetwork
from worker.models.tpsmm.inpainting import InpaintingNetwork
from worker.models.tpsmm.keypoint_detector import KeypointDetector
from worker.models.tpsmm.model import TPSMModel
from worker.models.tpsmm.motion_transfer import relative_kp

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
