"""LivePortrait (Guo et al., 2024) as the engine serves it: the published folder, one model."""

from pathlib import Path

import torch
from torch import nn

from engine.checkpoints import Checkpoint
from engine.families.adapter import Motion
from engine.families.family import ModelFamily
from engine.families.liveportrait.adapter import LivePortraitAdapter
from engine.families.liveportrait.checkpoint import (
    describe,
    find_root,
    is_liveportrait_folder,
    load_liveportrait,
)
from engine.families.liveportrait.landmarks import (
    RETARGETING_OPTIONS,
    LandmarkRunner,
    landmark_file,
    missing_for_landmarks,
)
from engine.families.liveportrait.precision import prepare_liveportrait
from engine.families.liveportrait.regions import PUBLISHED_NUM_KP

MOTION = ("driving_option", "stitching", "multiplier")
DEGREES_PER_UNIT = 30.0  # pose vectors: 30 degrees of head rotation weigh as one unit of expression


class LivePortrait(ModelFamily):
    name = "liveportrait"
    title = "LivePortrait"

    def recognises(self, checkpoint: Checkpoint) -> bool:
        return checkpoint.is_folder and is_liveportrait_folder(checkpoint.path)

    def load(self, checkpoint: Checkpoint, config: dict | str | Path | None) -> nn.Module:
        """The folder's networks; `landmark_path` is its landmark.onnx, None where it has none."""
        model = load_liveportrait(checkpoint.path, config=config)
        model.landmark_path = landmark_file(find_root(checkpoint.path))
        return model

    def prepare(self, model: nn.Module, device: str) -> nn.Module:
        return prepare_liveportrait(model, device)

    def adapter(self, model: nn.Module, device: str) -> LivePortraitAdapter:
        path = getattr(model, "landmark_path", None)
        landmarks = LandmarkRunner(path) if missing_for_landmarks(path) is None else None
        return LivePortraitAdapter(self.prepare(model, device), landmarks)

    def pose(self, kp: Motion) -> torch.Tensor:
        """Head rotation and expression: (N, 3 + 3K)."""
        angles = torch.cat([kp["pitch"], kp["yaw"], kp["roll"]], dim=1) / DEGREES_PER_UNIT
        return torch.cat([angles, kp["exp"].flatten(1)], dim=1)

    def modes(self, model: nn.Module) -> tuple[str, ...]:
        return model.modes

    def options(self, model: nn.Module) -> tuple[str, ...]:
        """Regions other than all and pose use the published keypoint indices (21 keypoints); eye and
        lip options need the landmark model (`refusals` says why they are missing)."""
        region = ("region",) if model.num_kp == PUBLISHED_NUM_KP else ()
        landmarks = RETARGETING_OPTIONS if not self.refusals(model) else ()
        return (*region, *MOTION, *landmarks)

    def refusals(self, model: nn.Module) -> dict[str, str]:
        reason = missing_for_landmarks(getattr(model, "landmark_path", None))
        return {} if reason is None else dict.fromkeys(RETARGETING_OPTIONS, reason)

    def report(self, model: nn.Module) -> dict:
        details = describe(model)
        return {
            **super().report(model),
            "input_shape": details["input_shape"],
            "feature_volume": details["feature_volume"],
            "landmarks": str(model.landmark_path) if getattr(model, "landmark_path", None) else None,
        }
