"""The First Order Motion Model (Siarohin et al., NeurIPS 2019): networks under their published
names, so each can be compared with the original piece by piece."""

from engine.families.fomm.checkpoint import build_model, infer_config
from engine.families.fomm.dense_motion import DenseMotion
from engine.families.fomm.generator import Generator, SourceFeatures
from engine.families.fomm.keypoint_detector import KeypointDetector
from engine.families.fomm.model import FirstOrderModel
from engine.families.fomm.motion_transfer import normalize_kp

__all__ = [
    "DenseMotion",
    "FirstOrderModel",
    "Generator",
    "KeypointDetector",
    "SourceFeatures",
    "build_model",
    "infer_config",
    "normalize_kp",
]
