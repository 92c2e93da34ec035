"""The FOMM and TPSMM networks and the checkpoint loader: the engine's public API."""

from worker.models.checkpoint import (
    AnimationModel,
    CheckpointError,
    build_model,
    checkpoint_family,
    infer_config,
    load_checkpoint,
    save_checkpoint,
)
from worker.models.dense_motion import DenseMotion
from worker.models.generator import Generator, SourceFeatures
from worker.models.keypoint_detector import KeypointDetector
from worker.models.motion_transfer import normalize_kp
from worker.models.tpsmm import TPSMModel

__all__ = [
    "AnimationModel",
    "CheckpointError",
    "DenseMotion",
    "Generator",
    "KeypointDetector",
    "SourceFeatures",
    "TPSMModel",
    "build_model",
    "checkpoint_family",
    "infer_config",
    "load_checkpoint",
    "normalize_kp",
    "save_checkpoint",
]
